/*
 * rtc._relay: the per-packet step of rtc.circuit in C.
 *
 * At hundreds of pass-through calls per core, nearly all of the gateway's CPU
 * is one step repeated: take a datagram that continues a stream, unprotect it,
 * restamp its header, protect it, send it (rtc/circuit.py). In Python that
 * step costs several microseconds of interpreter work around the two SRTP
 * calls and the sendto (bench/README.md, rounds 12-14). ``Relay`` is that
 * step, the same decisions in the same order as ``rtc.circuit._Relay.take``
 * (the reference; tests/rtc/test_circuit.py runs both against each other):
 * its attributes are the circuit's state, read and reset by the Python
 * around it (sync, release). ``Tap`` is a datagram callback that offers each
 * datagram to the leg's engaged circuit before the leg's own Python callback,
 * so a relayed packet never enters the interpreter.
 *
 * SRTP goes through pylibsrtp's own libsrtp (the function and context
 * addresses rtc.srtp hands over, with the signature checked there), never a
 * second copy of the library. Sending goes straight to a duplicate of the
 * socket's descriptor (so it cannot be closed and reused under us); any error
 * there is handed to the transport's own sendto, which reports it its way.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* pylibsrtp's buffer: no datagram longer than this is relayed */
#define BUFFER_SIZE 1500

typedef int (*srtp_call)(void *context, void *packet, int *length);

typedef struct {
    PyObject_HEAD
    /* inbound: what continues the stream next */
    PyObject *peer; /* None: any address */
    long long ssrc;
    long long payload_type;
    long long sequence_number;
    long long timestamp;
    long long step;
    long long frame; /* payload bytes of a 20 ms packet; 0: Opus */
    long long clock_rate;
    PyObject *unprotect; /* callable or None */
    /* RFC 3550 A.8 (timestamp units), the last arrival (CLOCK_MONOTONIC) */
    double jitter;
    double transit;
    int has_transit;
    double last;
    /* outbound: the header of the next packet, and how to send it */
    long long out_first;
    long long out_payload_type;
    long long out_ssrc;
    long long out_sequence;
    long long out_timestamp;
    long long out_step;
    PyObject *extension; /* bytes */
    PyObject *protect;   /* callable or None */
    PyObject *sendto;    /* callable */
    PyObject *address;
    /* since the last sync */
    long long packets;
    long long octets;
    long long in_octets;
    long long out_octets;
    long long wraps;
    /* native ways, when bound */
    srtp_call unprotect_call;
    void *unprotect_context;
    Py_ssize_t unprotect_room;
    srtp_call protect_call;
    void *protect_context;
    Py_ssize_t protect_room;
    int fd;
    struct sockaddr_storage destination;
    socklen_t destination_length;
} Relay;

/* Opus TOC bytes of one 20 ms packet (set by rtc.circuit); a code 3 packet
 * is asked of rtc.circuit's own check */
static unsigned char opus_20ms[256];
static PyObject *opus_code3 = NULL;
static PyObject *str_circuit_in = NULL;
static PyObject *str_release = NULL;

static double
monotonic(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

static PyTypeObject RelayType;

/* what relay_forward (and relay_take_raw) leave to be done */
enum {
    FORWARD_DECLINED = 0, /* nothing done: the datagram is for the leg's path */
    FORWARD_DONE = 1,     /* relayed, or dropped as the leg would */
    FORWARD_PYTHON = 2,   /* without the interpreter: it needs Python; nothing done yet */
    FORWARD_RELEASE = 3,  /* without the interpreter: lost, and the circuit is to be released */
    FORWARD_SEND = 4,     /* without the interpreter: relayed into out, for the transport's sendto */
};

/* whether the datagram continues the stream exactly (its header; not the peer) */
static int
relay_continues(Relay *self, const unsigned char *in, Py_ssize_t size)
{
    if (size < 12 || in[1] != self->payload_type || (in[0] & 0xEF) != 0x80)
        return 0;
    long long sequence_number = ((long long)in[2] << 8) | in[3];
    long long timestamp = ((long long)in[4] << 24) | (in[5] << 16) | (in[6] << 8) | in[7];
    long long ssrc = ((long long)in[8] << 24) | (in[9] << 16) | (in[10] << 8) | in[11];
    return sequence_number == self->sequence_number && timestamp == self->timestamp &&
           ssrc == self->ssrc;
}

/*
 * The step after unprotecting: one 20 ms frame is restamped, protected and
 * sent. ``packet``: the clear packet (``length`` bytes) of a datagram of
 * ``size`` bytes. With ``python`` 0 (no interpreter: a collector's pause)
 * nothing that needs Python is done, and the FORWARD_ codes say what is left;
 * ``out`` (BUFFER_SIZE) then holds a packet to send (FORWARD_SEND, *out_length).
 * With ``python`` 1: FORWARD_DECLINED, FORWARD_DONE or -1 (an error raised).
 */
static int
relay_forward(Relay *self, const unsigned char *packet, Py_ssize_t length, Py_ssize_t size,
              int python, unsigned char *out, Py_ssize_t *out_size)
{
    long long timestamp = ((long long)packet[4] << 24) | (packet[5] << 16) | (packet[6] << 8) |
                          packet[7];
    Py_ssize_t offset = 12;
    if (packet[0] != 0x80)
        offset = length < 16 ? length : 16 + 4 * (((Py_ssize_t)packet[14] << 8) | packet[15]);
    if (offset > length)
        offset = length;
    const unsigned char *payload = packet + offset;
    Py_ssize_t payload_length = length - offset;
    int one_frame;
    if (self->frame)
        one_frame = payload_length == self->frame;
    else if (payload_length == 0)
        one_frame = 0;
    else if (opus_20ms[payload[0]])
        one_frame = 1;
    else if ((payload[0] & 3) == 3 && opus_code3 != NULL) {
        if (!python)
            return FORWARD_PYTHON;
        PyObject *bytes = PyBytes_FromStringAndSize((const char *)payload, payload_length);
        if (bytes == NULL)
            return -1;
        PyObject *answer = PyObject_CallOneArg(opus_code3, bytes);
        Py_DECREF(bytes);
        if (answer == NULL)
            return -1;
        one_frame = PyObject_IsTrue(answer);
        Py_DECREF(answer);
        if (one_frame < 0)
            return -1;
    }
    else
        one_frame = 0;
    if (!one_frame) {
        /* not one 20 ms frame: a change of packet time, for the leg's own path */
        if (self->unprotect == Py_None)
            return FORWARD_DECLINED;
        /* already unprotected (SRTP would call a second time a replay): lost,
         * and the leg's path takes the stream from the next packet */
        if (!python)
            return FORWARD_RELEASE;
        PyObject *released = PyObject_CallMethodNoArgs((PyObject *)self, str_release);
        if (released == NULL)
            return -1;
        Py_DECREF(released);
        return FORWARD_DONE;
    }
    const char *extension = PyBytes_AS_STRING(self->extension);
    Py_ssize_t extension_length = PyBytes_GET_SIZE(self->extension);
    Py_ssize_t out_length = 12 + extension_length + payload_length;
    int native = self->protect_call != NULL || self->protect == Py_None;
    if (native && out_length > (self->protect_call != NULL ? self->protect_room : BUFFER_SIZE))
        native = 0; /* the Python way says what is wrong with it */
    if (!python && (!native || self->fd < 0))
        return FORWARD_PYTHON;

    long long sequence_number = ((long long)packet[2] << 8) | packet[3];
    self->sequence_number = (sequence_number + 1) & 0xFFFF;
    if (sequence_number == 0)
        self->wraps += 1; /* past 0xFFFF (RFC 3550 A.1's cycles) */
    self->timestamp = (timestamp + self->step) & 0xFFFFFFFFLL;
    /* RFC 3550 A.8, as rtc.stats.ReceiverStatistics */
    double now = monotonic();
    double transit = now * (double)self->clock_rate - (double)timestamp;
    if (self->has_transit) {
        double d = transit - self->transit;
        if (d < 0)
            d = -d;
        if (d < (double)self->clock_rate * 10) /* not across a timestamp wrap */
            self->jitter += (d - self->jitter) / 16;
    }
    self->transit = transit;
    self->has_transit = 1;
    self->last = now;
    self->packets += 1;
    self->octets += payload_length;
    self->in_octets += size;

    long long out_sequence = self->out_sequence;
    self->out_sequence = (out_sequence + 1) & 0xFFFF;
    long long out_timestamp = self->out_timestamp;
    self->out_timestamp = (out_timestamp + self->out_step) & 0xFFFFFFFFLL;
    unsigned char header[12] = {
        (unsigned char)self->out_first,
        (unsigned char)self->out_payload_type,
        (unsigned char)(out_sequence >> 8),
        (unsigned char)out_sequence,
        (unsigned char)(out_timestamp >> 24),
        (unsigned char)(out_timestamp >> 16),
        (unsigned char)(out_timestamp >> 8),
        (unsigned char)out_timestamp,
        (unsigned char)(self->out_ssrc >> 24),
        (unsigned char)(self->out_ssrc >> 16),
        (unsigned char)(self->out_ssrc >> 8),
        (unsigned char)self->out_ssrc,
    };
    if (native) {
        memcpy(out, header, 12);
        memcpy(out + 12, extension, extension_length);
        memcpy(out + 12 + extension_length, payload, payload_length);
        if (self->protect_call != NULL) {
            int n = (int)out_length;
            if (self->protect_call(self->protect_context, out, &n) != 0)
                native = 0; /* again the Python way, which raises its error */
            else
                out_length = n;
        }
    }
    if (!python && !native)
        return FORWARD_DONE; /* libsrtp refused to protect it: lost (Python would raise) */
    if (native && self->fd >= 0) {
        self->out_octets += out_length;
        if (sendto(self->fd, out, (size_t)out_length, MSG_DONTWAIT,
                   (struct sockaddr *)&self->destination, self->destination_length) ==
            out_length)
            return FORWARD_DONE;
        if (!python) {
            *out_size = out_length;
            return FORWARD_SEND;
        }
        /* the transport's sendto (queueing, its error reports) with the same bytes */
        PyObject *bytes = PyBytes_FromStringAndSize((const char *)out, out_length);
        if (bytes == NULL)
            return -1;
        PyObject *sent = PyObject_CallFunctionObjArgs(self->sendto, bytes, self->address, NULL);
        Py_DECREF(bytes);
        if (sent == NULL)
            return -1;
        Py_DECREF(sent);
        return FORWARD_DONE;
    }
    PyObject *bytes;
    if (native) {
        bytes = PyBytes_FromStringAndSize((const char *)out, out_length);
    }
    else {
        /* header + extension + payload, protected the Python way */
        PyObject *clear_packet = PyBytes_FromStringAndSize(NULL, 12 + extension_length + payload_length);
        if (clear_packet == NULL)
            return -1;
        char *to = PyBytes_AS_STRING(clear_packet);
        memcpy(to, header, 12);
        memcpy(to + 12, extension, extension_length);
        memcpy(to + 12 + extension_length, payload, payload_length);
        if (self->protect == Py_None)
            bytes = clear_packet;
        else {
            bytes = PyObject_CallOneArg(self->protect, clear_packet);
            Py_DECREF(clear_packet);
        }
    }
    if (bytes == NULL)
        return -1;
    Py_ssize_t sent_length = PyObject_Length(bytes);
    if (sent_length < 0) {
        Py_DECREF(bytes);
        return -1;
    }
    self->out_octets += sent_length;
    PyObject *sent = PyObject_CallFunctionObjArgs(self->sendto, bytes, self->address, NULL);
    Py_DECREF(bytes);
    if (sent == NULL)
        return -1;
    Py_DECREF(sent);
    return FORWARD_DONE;
}

/* 1: relayed (or dropped as the leg would); 0: declined, nothing done; -1: error */
static int
relay_take(Relay *self, PyObject *data, PyObject *addr)
{
    if (!PyBytes_Check(data))
        return 0;
    const unsigned char *in = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (!relay_continues(self, in, size))
        return 0;
    if (self->peer != Py_None) {
        int same = PyObject_RichCompareBool(addr, self->peer, Py_EQ);
        if (same <= 0)
            return same;
    }
    unsigned char clear[BUFFER_SIZE];
    unsigned char out[BUFFER_SIZE];
    Py_ssize_t out_size;
    if (self->unprotect_call != NULL) {
        if (size > self->unprotect_room)
            return 1; /* too long to be ours: dropped, as the leg would */
        int n = (int)size;
        memcpy(clear, in, size);
        if (self->unprotect_call(self->unprotect_context, clear, &n) != 0)
            return 1; /* forged or replayed: dropped, as the leg would */
        return relay_forward(self, clear, n, size, 1, out, &out_size);
    }
    if (self->unprotect != Py_None) {
        PyObject *unprotected = PyObject_CallOneArg(self->unprotect, data);
        if (unprotected == NULL || !PyBytes_Check(unprotected)) {
            Py_XDECREF(unprotected);
            PyErr_Clear();
            return 1;
        }
        int result = relay_forward(self, (const unsigned char *)PyBytes_AS_STRING(unprotected),
                                   PyBytes_GET_SIZE(unprotected), size, 1, out, &out_size);
        Py_DECREF(unprotected);
        return result;
    }
    return relay_forward(self, in, size, size, 1, out, &out_size);
}

static PyObject *
Relay_take(Relay *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "take(data, addr=None)");
        return NULL;
    }
    int taken = relay_take(self, args[0], nargs == 2 ? args[1] : Py_None);
    if (taken < 0)
        return NULL;
    return PyBool_FromLong(taken);
}

static void
relay_unbind(Relay *self)
{
    if (self->fd >= 0) {
        close(self->fd);
        self->fd = -1;
    }
    self->unprotect_call = NULL;
    self->protect_call = NULL;
}

/* _bind_native(unprotect_call, unprotect_context, unprotect_room, protect_call,
 *              protect_context, protect_room, fd, family): addresses of 0 and an fd
 * of -1 leave that step to the Python callables; the fd is duplicated */
static PyObject *
Relay_bind_native(Relay *self, PyObject *args)
{
    unsigned long long unprotect_call, unprotect_context, protect_call, protect_context;
    Py_ssize_t unprotect_room, protect_room;
    int fd, family;
    if (!PyArg_ParseTuple(args, "KKnKKnii", &unprotect_call, &unprotect_context,
                          &unprotect_room, &protect_call, &protect_context, &protect_room, &fd,
                          &family))
        return NULL;
    relay_unbind(self);
    if (unprotect_room > BUFFER_SIZE || protect_room > BUFFER_SIZE) {
        PyErr_SetString(PyExc_ValueError, "room beyond the relay's buffer");
        return NULL;
    }
    self->unprotect_call = (srtp_call)(uintptr_t)unprotect_call;
    self->unprotect_context = (void *)(uintptr_t)unprotect_context;
    self->unprotect_room = unprotect_room;
    self->protect_call = (srtp_call)(uintptr_t)protect_call;
    self->protect_context = (void *)(uintptr_t)protect_context;
    self->protect_room = protect_room;
    if (fd < 0)
        Py_RETURN_FALSE;
    /* the destination: (host, port) or (host, port, flowinfo, scope_id) */
    PyObject *address = self->address;
    const char *host;
    int port;
    unsigned int flowinfo = 0, scope_id = 0;
    if (!PyTuple_Check(address) ||
        !PyArg_ParseTuple(address, "si|II", &host, &port, &flowinfo, &scope_id)) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    memset(&self->destination, 0, sizeof(self->destination));
    if (family == AF_INET) {
        struct sockaddr_in *to = (struct sockaddr_in *)&self->destination;
        to->sin_family = AF_INET;
        to->sin_port = htons((uint16_t)port);
        if (port < 0 || port > 65535 || inet_pton(AF_INET, host, &to->sin_addr) != 1)
            Py_RETURN_FALSE;
        self->destination_length = sizeof(*to);
    }
    else if (family == AF_INET6) {
        struct sockaddr_in6 *to = (struct sockaddr_in6 *)&self->destination;
        to->sin6_family = AF_INET6;
        to->sin6_port = htons((uint16_t)port);
        to->sin6_flowinfo = htonl(flowinfo);
        to->sin6_scope_id = scope_id;
        if (port < 0 || port > 65535 || inet_pton(AF_INET6, host, &to->sin6_addr) != 1)
            Py_RETURN_FALSE;
        self->destination_length = sizeof(*to);
    }
    else
        Py_RETURN_FALSE;
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    self->fd = copy;
    Py_RETURN_TRUE;
}

static PyObject *
Relay_unbind_native(Relay *self, PyObject *Py_UNUSED(ignored))
{
    relay_unbind(self);
    Py_RETURN_NONE;
}

static PyObject *
Relay_get_transit(Relay *self, void *Py_UNUSED(closure))
{
    if (!self->has_transit)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(self->transit);
}

static int
Relay_set_transit(Relay *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL || value == Py_None) {
        self->has_transit = 0;
        return 0;
    }
    double transit = PyFloat_AsDouble(value);
    if (transit == -1.0 && PyErr_Occurred())
        return -1;
    self->transit = transit;
    self->has_transit = 1;
    return 0;
}

static PyObject *
Relay_get_native(Relay *self, void *Py_UNUSED(closure))
{
    return Py_BuildValue("(OOO)", self->unprotect_call ? Py_True : Py_False,
                         self->protect_call ? Py_True : Py_False,
                         self->fd >= 0 ? Py_True : Py_False);
}

static int
Relay_traverse(Relay *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->peer);
    Py_VISIT(self->unprotect);
    Py_VISIT(self->extension);
    Py_VISIT(self->protect);
    Py_VISIT(self->sendto);
    Py_VISIT(self->address);
    return 0;
}

static int
Relay_clear(Relay *self)
{
    Py_CLEAR(self->peer);
    Py_CLEAR(self->unprotect);
    Py_CLEAR(self->extension);
    Py_CLEAR(self->protect);
    Py_CLEAR(self->sendto);
    Py_CLEAR(self->address);
    return 0;
}

static void
Relay_dealloc(Relay *self)
{
    PyObject_GC_UnTrack(self);
    relay_unbind(self);
    Relay_clear(self);
    /* a Python subclass's type is released by its own dealloc (subtype_dealloc) */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Relay_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    Relay *self = (Relay *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->peer = Py_NewRef(Py_None);
    self->unprotect = Py_NewRef(Py_None);
    self->extension = PyBytes_FromStringAndSize(NULL, 0);
    self->protect = Py_NewRef(Py_None);
    self->sendto = Py_NewRef(Py_None);
    self->address = Py_NewRef(Py_None);
    self->fd = -1;
    if (self->extension == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
Relay_set_object(PyObject **slot, PyObject *value, int bytes)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete a relay's attribute");
        return -1;
    }
    if (bytes && !PyBytes_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "bytes expected");
        return -1;
    }
    Py_SETREF(*slot, Py_NewRef(value));
    return 0;
}

#define OBJECT_ATTRIBUTE(name, bytes)                                                    \
    static PyObject *Relay_get_##name(Relay *self, void *Py_UNUSED(closure))             \
    {                                                                                    \
        return Py_NewRef(self->name);                                                    \
    }                                                                                    \
    static int Relay_set_##name(Relay *self, PyObject *value, void *Py_UNUSED(closure))  \
    {                                                                                    \
        return Relay_set_object(&self->name, value, bytes);                              \
    }

OBJECT_ATTRIBUTE(peer, 0)
OBJECT_ATTRIBUTE(unprotect, 0)
OBJECT_ATTRIBUTE(extension, 1)
OBJECT_ATTRIBUTE(protect, 0)
OBJECT_ATTRIBUTE(sendto, 0)
OBJECT_ATTRIBUTE(address, 0)

#define OBJECT_GETSET(name) {#name, (getter)Relay_get_##name, (setter)Relay_set_##name, NULL, NULL}

static PyGetSetDef Relay_getset[] = {
    {"transit", (getter)Relay_get_transit, (setter)Relay_set_transit, NULL, NULL},
    {"native", (getter)Relay_get_native, NULL,
     "whether unprotect, protect and sendto go the native way", NULL},
    OBJECT_GETSET(peer),
    OBJECT_GETSET(unprotect),
    OBJECT_GETSET(extension),
    OBJECT_GETSET(protect),
    OBJECT_GETSET(sendto),
    OBJECT_GETSET(address),
    {NULL},
};

#define INTEGER(name) {#name, T_LONGLONG, offsetof(Relay, name), 0, NULL}
#define REAL(name) {#name, T_DOUBLE, offsetof(Relay, name), 0, NULL}

static PyMemberDef Relay_members[] = {
    INTEGER(ssrc),
    INTEGER(payload_type),
    INTEGER(sequence_number),
    INTEGER(timestamp),
    INTEGER(step),
    INTEGER(frame),
    INTEGER(clock_rate),
    REAL(jitter),
    REAL(last),
    INTEGER(out_first),
    INTEGER(out_payload_type),
    INTEGER(out_ssrc),
    INTEGER(out_sequence),
    INTEGER(out_timestamp),
    INTEGER(out_step),
    INTEGER(packets),
    INTEGER(octets),
    INTEGER(in_octets),
    INTEGER(out_octets),
    INTEGER(wraps),
    {NULL},
};

static PyMethodDef Relay_methods[] = {
    {"take", (PyCFunction)(void (*)(void))Relay_take, METH_FASTCALL,
     "take(data, addr=None) -> bool: relay a datagram that continues the stream exactly"},
    {"_bind_native", (PyCFunction)Relay_bind_native, METH_VARARGS,
     "the native SRTP calls and socket; True when sending goes the native way"},
    {"_unbind_native", (PyCFunction)Relay_unbind_native, METH_NOARGS,
     "back to the Python callables; the duplicated descriptor is closed"},
    {NULL},
};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._relay.Relay",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A circuit's per-packet step (rtc.circuit).",
    .tp_new = Relay_new,
    .tp_dealloc = (destructor)Relay_dealloc,
    .tp_traverse = (traverseproc)Relay_traverse,
    .tp_clear = (inquiry)Relay_clear,
    .tp_methods = Relay_methods,
    .tp_members = Relay_members,
    .tp_getset = Relay_getset,
};

/* Tap(leg, fallback): a datagram callback; the leg's engaged circuit first */
typedef struct {
    PyObject_HEAD
    PyObject *leg;
    PyObject *fallback;
} Tap;

static PyObject *
Tap_call(Tap *self, PyObject *args, PyObject *kwargs)
{
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs >= 1 && nargs <= 2 && kwargs == NULL) {
        PyObject *circuit = PyObject_GetAttr(self->leg, str_circuit_in);
        if (circuit == NULL)
            return NULL;
        if (PyObject_TypeCheck(circuit, &RelayType)) {
            int taken = relay_take((Relay *)circuit, PyTuple_GET_ITEM(args, 0),
                                   nargs == 2 ? PyTuple_GET_ITEM(args, 1) : Py_None);
            Py_DECREF(circuit);
            if (taken < 0)
                return NULL;
            if (taken)
                Py_RETURN_NONE;
        }
        else
            Py_DECREF(circuit);
    }
    return PyObject_Call(self->fallback, args, kwargs);
}

static int
Tap_init(Tap *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"leg", "fallback", NULL};
    PyObject *leg, *fallback;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO", keywords, &leg, &fallback))
        return -1;
    Py_XSETREF(self->leg, Py_NewRef(leg));
    Py_XSETREF(self->fallback, Py_NewRef(fallback));
    return 0;
}

static int
Tap_traverse(Tap *self, visitproc visit, void *arg)
{
    Py_VISIT(self->leg);
    Py_VISIT(self->fallback);
    return 0;
}

static int
Tap_clear(Tap *self)
{
    Py_CLEAR(self->leg);
    Py_CLEAR(self->fallback);
    return 0;
}

static void
Tap_dealloc(Tap *self)
{
    PyObject_GC_UnTrack(self);
    Tap_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Tap_members[] = {
    {"leg", T_OBJECT, offsetof(Tap, leg), READONLY, NULL},
    {"fallback", T_OBJECT, offsetof(Tap, fallback), READONLY, NULL},
    {NULL},
};

static PyTypeObject TapType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._relay.Tap",
    .tp_basicsize = sizeof(Tap),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Tap(leg, fallback)(data, addr): leg._circuit_in takes it, or fallback does.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Tap_init,
    .tp_call = (ternaryfunc)Tap_call,
    .tp_dealloc = (destructor)Tap_dealloc,
    .tp_traverse = (traverseproc)Tap_traverse,
    .tp_clear = (inquiry)Tap_clear,
    .tp_members = Tap_members,
};

static PyObject *
set_opus_20ms(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer tocs;
    PyObject *code3;
    if (!PyArg_ParseTuple(args, "y*O", &tocs, &code3))
        return NULL;
    if (tocs.len != 256) {
        PyBuffer_Release(&tocs);
        PyErr_SetString(PyExc_ValueError, "one flag per TOC byte (256)");
        return NULL;
    }
    memcpy(opus_20ms, tocs.buf, 256);
    PyBuffer_Release(&tocs);
    Py_XSETREF(opus_code3, Py_NewRef(code3));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_opus_20ms", set_opus_20ms, METH_VARARGS,
     "set_opus_20ms(tocs, code3): the TOC bytes of one 20 ms Opus packet (a flag per "
     "byte), and the check of a code 3 packet"},
    {NULL},
};

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "rtc._relay",
    .m_doc = "The per-packet step of rtc.circuit in C.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__relay(void)
{
    str_circuit_in = PyUnicode_InternFromString("_circuit_in");
    str_release = PyUnicode_InternFromString("release");
    if (str_circuit_in == NULL || str_release == NULL)
        return NULL;
    if (PyType_Ready(&RelayType) < 0 || PyType_Ready(&TapType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&relay_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Relay", (PyObject *)&RelayType) < 0 ||
        PyModule_AddObjectRef(module, "Tap", (PyObject *)&TapType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
