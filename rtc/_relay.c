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
 * so a relayed packet never enters the interpreter. ``Reader`` and ``Hub``
 * read the media sockets for the event loop (rtc.udp).
 *
 * SRTP goes through pylibsrtp's own libsrtp (the function and context
 * addresses rtc.srtp hands over, with the signature checked there), never a
 * second copy of the library. Sending goes straight to a duplicate of the
 * socket's descriptor (so it cannot be closed and reused under us); any error
 * there is handed to the transport's own sendto, which reports it its way.
 *
 * While a pass of the collector holds the interpreter, a thread of this
 * module goes on relaying the engaged circuits' streams ("Pauses" below).
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
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

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
    /* receiving without the interpreter, in the collector's pauses (below) */
    int in_fd;     /* a duplicate of the receiving socket's descriptor, or -1 */
    PyObject *tap; /* that socket's Tap */
    struct sockaddr_storage peer_address;
    socklen_t peer_address_length; /* 0: any */
    Py_ssize_t slot;               /* in the registry, or -1 */
    int declined; /* in this pass: the stream's datagrams wait for Python */
    int held;     /* being synced: the thread leaves it to Python */
} Relay;

/* a datagram (or what is left of one) that waits for Python after a pause */
typedef struct Entry {
    struct Entry *next;
    int kind;     /* ENTRY_ */
    Relay *relay; /* a strong reference once the pause is over (owned) */
    int owned;
    Py_ssize_t size; /* the datagram's, for ENTRY_CLEAR */
    Py_ssize_t length;
    struct sockaddr_storage from;
    socklen_t from_length;
    unsigned char data[];
} Entry;

enum {
    ENTRY_RAW,     /* a datagram as it came: for the Tap */
    ENTRY_CLEAR,   /* unprotected, to be relayed with Python's help (relay_forward) */
    ENTRY_SEND,    /* relayed, for the transport's sendto */
    ENTRY_RELEASE, /* lost, and the circuit to be released */
};

/* Tap(leg, fallback): a datagram callback; the leg's engaged circuit first */
typedef struct {
    PyObject_HEAD
    PyObject *leg;
    PyObject *fallback;
    /* the leg's engaged circuit while it is bound to this socket (borrowed:
     * its unbinding clears it), so that a datagram needs no attribute lookup */
    Relay *engaged;
    /* what a pause left for Python, in the order it came */
    Entry *head;
    Entry *tail;
    Py_ssize_t pending;
} Tap;

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

/* what relay_forward leaves to be done (the FORWARD_ codes after python 0) */
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

/* a datagram unprotected by the native SRTP call into ``clear`` (BUFFER_SIZE):
 * its length, or -1 when the leg would drop it (too long to be ours, forged or
 * replayed) */
static int
relay_unprotect(Relay *self, const unsigned char *in, Py_ssize_t size, unsigned char *clear)
{
    if (size > self->unprotect_room)
        return -1;
    int n = (int)size;
    memcpy(clear, in, (size_t)size);
    if (self->unprotect_call(self->unprotect_context, clear, &n) != 0)
        return -1;
    return n;
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
    /* too long for SRTP's buffer (no 20 ms frame a real encoder makes): counted
     * in, then lost, as rtc.circuit's step loses it */
    int too_long = self->protect_call != NULL && out_length > self->protect_room;
    int native = self->protect_call != NULL || self->protect == Py_None;
    if (native && self->protect_call == NULL && out_length > BUFFER_SIZE)
        native = 0; /* plain RTP longer than our buffer: the Python way */
    if (!python && !too_long && (!native || self->fd < 0))
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
    if (too_long)
        return FORWARD_DONE;
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
        return FORWARD_DONE; /* libsrtp refused to protect it: lost, as in Python */
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
            if (bytes == NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
                /* too long for SRTP's buffer: lost, as rtc.circuit's step */
                PyErr_Clear();
                return FORWARD_DONE;
            }
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

/* the first of several errors, raised once all were tried */
typedef struct {
    PyObject *type, *value, *traceback;
} FirstError;

/* an error is set: kept if it is the first, else cleared */
static void
first_error_keep(FirstError *first)
{
    if (first->type == NULL)
        PyErr_Fetch(&first->type, &first->value, &first->traceback);
    else
        PyErr_Clear();
}

/* -1 with the first error raised again, or 0: there was none */
static int
first_error_raise(FirstError *first)
{
    if (first->type == NULL)
        return 0;
    PyErr_Restore(first->type, first->value, first->traceback);
    return -1;
}

/* after the checks of the stream and the peer: unprotected natively (or
 * plain RTP) and forwarded; relay_forward's codes with python 1 */
static int
relay_pass(Relay *self, const unsigned char *in, Py_ssize_t size)
{
    unsigned char clear[BUFFER_SIZE];
    unsigned char out[BUFFER_SIZE];
    Py_ssize_t out_size;
    if (self->unprotect_call == NULL)
        return relay_forward(self, in, size, size, 1, out, &out_size);
    int n = relay_unprotect(self, in, size, clear);
    if (n < 0)
        return 1; /* dropped, as the leg would */
    return relay_forward(self, clear, n, size, 1, out, &out_size);
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
    if (self->unprotect_call != NULL || self->unprotect == Py_None)
        return relay_pass(self, in, size);
    PyObject *unprotected = PyObject_CallOneArg(self->unprotect, data);
    if (unprotected == NULL || !PyBytes_Check(unprotected)) {
        Py_XDECREF(unprotected);
        PyErr_Clear();
        return 1; /* forged or replayed: dropped, as the leg would */
    }
    unsigned char out[BUFFER_SIZE];
    Py_ssize_t out_size;
    int result = relay_forward(self, (const unsigned char *)PyBytes_AS_STRING(unprotected),
                               PyBytes_GET_SIZE(unprotected), size, 1, out, &out_size);
    Py_DECREF(unprotected);
    return result;
}

/*
 * Pauses. CPython's collector holds the interpreter for the whole of a pass;
 * with hundreds of calls a full pass takes 150-200 ms, and every call's media
 * would wait for it (bench/README.md, rounds 13-14). A relay bound to native
 * SRTP and sockets needs no interpreter for a packet that continues its
 * stream, so while a pass runs (rtc.circuit hooks gc.callbacks: pause_start,
 * pause_stop) a thread of this module reads the engaged relays' receiving
 * sockets and relays what continues their streams. Whatever needs Python
 * waits in the socket's Tap in the order it came, and is handed to Python
 * after the pass, before the socket's next datagram (rtc.circuit schedules
 * drain). Once a datagram of the stream itself waits, the rest of that
 * stream waits behind it until the pass ends, so nothing is reordered.
 * The thread never takes the interpreter's lock: during a pass the only
 * Python that runs is finalizers', and a relay's registration, its
 * descriptors and the thread's work on it go under one mutex. It serves
 * only passes run by the thread that registered the relays (the event
 * loop's): a pass another thread runs could find the loop's thread inside
 * libsrtp with the interpreter's lock released (cffi releases it), or
 * reading the sockets, and libsrtp's sessions are not for two threads.
 */
#define MAX_PENDING 512
#define RECEIVE_SIZE 65536

static PyTypeObject TapType;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t parked_cond = PTHREAD_COND_INITIALIZER;
/* the relays the thread may serve, and those of the pass under way */
static Relay **registry = NULL;
static Py_ssize_t registered = 0, registry_room = 0;
static Relay **snapshot = NULL;
static Py_ssize_t snapshot_count = 0, snapshot_room = 0;
static int running = 0; /* a pass is under way */
static int parked = 1;  /* the thread waits for one */
static int thread_started = 0;
static unsigned long owner = 0; /* the thread that registers relays: the loop's */
static int epoll_fd = -1;
static int wake_fd = -1;         /* eventfd: pause_stop's word to the thread */
static PyObject *waiting = NULL; /* Taps with entries for drain */
/* passes served, packets relayed and datagrams left for Python in them */
static unsigned long long pause_passes = 0, pause_relayed = 0, pause_waited = 0;

/* lock held */
static int
registry_add(Relay *relay)
{
    if (registered == registry_room) {
        Py_ssize_t room = registry_room ? registry_room * 2 : 64;
        Relay **grown = PyMem_RawRealloc(registry, (size_t)room * sizeof(Relay *));
        if (grown == NULL)
            return -1;
        registry = grown;
        registry_room = room;
    }
    registry[registered] = relay;
    relay->slot = registered++;
    owner = PyThread_get_thread_ident();
    return 0;
}

/* lock held */
static void
registry_remove(Relay *relay)
{
    if (relay->slot < 0)
        return;
    Relay *last = registry[--registered];
    registry[relay->slot] = last;
    last->slot = relay->slot;
    relay->slot = -1;
}

static int
same_peer(Relay *self, const struct sockaddr_storage *from)
{
    if (self->peer_address_length == 0)
        return 1;
    if (from->ss_family != self->peer_address.ss_family)
        return 0;
    if (from->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)from;
        const struct sockaddr_in *b = (const struct sockaddr_in *)&self->peer_address;
        return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)from;
    const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)&self->peer_address;
    return a->sin6_port == b->sin6_port &&
           memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0;
}

/* rtc.circuit._Circuit.concerns: a declined datagram of the stream relayed */
static int
relay_concerns(Relay *self, const unsigned char *in, Py_ssize_t size,
               const struct sockaddr_storage *from)
{
    if (size < 12 || (in[0] & 0xC0) != 0x80 || (191 < in[1] && in[1] < 224))
        return 0; /* not RTP (STUN, DTLS, RTCP) */
    long long ssrc = ((long long)in[8] << 24) | (in[9] << 16) | (in[10] << 8) | in[11];
    if (ssrc == self->ssrc)
        return 1;
    if (self->peer != Py_None)
        return same_peer(self, from);
    return (in[1] & 0x7F) == self->payload_type;
}

/* lock held; an entry that cannot be had is lost, as in a full socket buffer */
static void
entry_queue(Tap *tap, int kind, Relay *relay, const unsigned char *data, Py_ssize_t length,
            Py_ssize_t size, const struct sockaddr_storage *from, socklen_t from_length)
{
    Entry *entry = PyMem_RawMalloc(sizeof(Entry) + (size_t)length);
    if (entry == NULL)
        return;
    entry->next = NULL;
    entry->kind = kind;
    entry->relay = relay;
    entry->owned = 0;
    entry->size = size;
    entry->length = length;
    entry->from_length = 0;
    if (from != NULL) {
        memcpy(&entry->from, from, from_length);
        entry->from_length = from_length;
    }
    if (length)
        memcpy(entry->data, data, (size_t)length);
    if (tap->tail != NULL)
        tap->tail->next = entry;
    else
        tap->head = entry;
    tap->tail = entry;
    tap->pending += 1;
    pause_waited += 1;
}

/* the thread, lock held: what the relay's receiving socket holds */
static void
relay_receive(Relay *self, unsigned char *in, unsigned char *clear, unsigned char *out)
{
    Tap *tap = (Tap *)self->tap;
    for (int budget = 32; budget > 0 && self->in_fd >= 0; budget--) {
        if (tap->pending >= MAX_PENDING) {
            /* the rest stays in the socket, behind these, for the loop */
            epoll_ctl(epoll_fd, EPOLL_CTL_DEL, self->in_fd, NULL);
            return;
        }
        struct sockaddr_storage from;
        socklen_t from_length = sizeof(from);
        ssize_t got = recvfrom(self->in_fd, in, RECEIVE_SIZE, MSG_DONTWAIT,
                               (struct sockaddr *)&from, &from_length);
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            continue; /* an ICMP report (the loop's transport only logs those) */
        }
        Py_ssize_t size = got;
        const unsigned char *packet = in;
        Py_ssize_t length = size;
        Py_ssize_t out_size = 0;
        int result = FORWARD_DECLINED;
        if (self->held)
            self->declined = 1; /* its state is being read and reset: all of it waits */
        if (!self->declined && relay_continues(self, in, size) && same_peer(self, &from) &&
            (self->unprotect_call != NULL || self->unprotect == Py_None)) {
            if (self->unprotect_call != NULL) {
                int n = relay_unprotect(self, in, size, clear);
                if (n < 0)
                    continue; /* dropped, as the leg would */
                packet = clear;
                length = n;
            }
            result = relay_forward(self, packet, length, size, 0, out, &out_size);
        }
        switch (result) {
        case FORWARD_DONE:
            pause_relayed += 1;
            break;
        case FORWARD_SEND:
            pause_relayed += 1;
            entry_queue(tap, ENTRY_SEND, self, out, out_size, size, NULL, 0);
            self->declined = 1;
            break;
        case FORWARD_RELEASE:
            entry_queue(tap, ENTRY_RELEASE, self, NULL, 0, size, NULL, 0);
            self->declined = 1;
            break;
        case FORWARD_PYTHON:
            if (packet == clear)
                entry_queue(tap, ENTRY_CLEAR, self, clear, length, size, &from, from_length);
            else
                entry_queue(tap, ENTRY_RAW, self, in, size, size, &from, from_length);
            self->declined = 1;
            break;
        default:
            entry_queue(tap, ENTRY_RAW, self, in, size, size, &from, from_length);
            if (relay_concerns(self, in, size, &from))
                self->declined = 1;
        }
    }
}

static void *
pause_thread(void *Py_UNUSED(arg))
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are the main thread's */
    static unsigned char in[RECEIVE_SIZE];
    unsigned char clear[BUFFER_SIZE], out[BUFFER_SIZE];
    struct epoll_event events[64];
    for (;;) {
        pthread_mutex_lock(&lock);
        while (!running) {
            if (!parked) {
                parked = 1;
                pthread_cond_broadcast(&parked_cond);
            }
            pthread_cond_wait(&wake, &lock);
        }
        parked = 0;
        int ready_fd = epoll_fd;
        pthread_mutex_unlock(&lock);
        int ready = epoll_wait(ready_fd, events, 64, -1);
        for (int i = 0; i < ready; i++) {
            Relay *relay = events[i].data.ptr;
            if (relay == NULL) {
                uint64_t word;
                if (read(wake_fd, &word, sizeof(word)) < 0) {
                    /* nothing to read: woken already */
                }
                continue;
            }
            pthread_mutex_lock(&lock);
            if (running)
                relay_receive(relay, in, clear, out);
            pthread_mutex_unlock(&lock);
        }
    }
    return NULL;
}

/* a fork's child has none of the parent's threads */
static void
after_fork(void)
{
    pthread_mutex_init(&lock, NULL);
    pthread_cond_init(&wake, NULL);
    pthread_cond_init(&parked_cond, NULL);
    thread_started = 0;
    running = 0;
    parked = 1;
    if (wake_fd >= 0)
        close(wake_fd);
    wake_fd = -1;
    if (epoll_fd >= 0)
        close(epoll_fd);
    epoll_fd = -1;
}

static PyObject *
pause_start(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&lock);
    if (running || registered == 0 || PyThread_get_thread_ident() != owner)
        goto no;
    if (wake_fd < 0 && (wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        goto no;
    if (!thread_started) {
        pthread_t thread;
        pthread_attr_t attributes;
        pthread_attr_init(&attributes);
        pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&thread, &attributes, pause_thread, NULL);
        pthread_attr_destroy(&attributes);
        if (failed)
            goto no;
        thread_started = 1;
    }
    if (snapshot_room < registered) {
        Relay **grown = PyMem_RawRealloc(snapshot, (size_t)registered * sizeof(Relay *));
        if (grown == NULL)
            goto no;
        snapshot = grown;
        snapshot_room = registered;
    }
    if ((epoll_fd = epoll_create1(EPOLL_CLOEXEC)) < 0)
        goto no;
    uint64_t word;
    if (read(wake_fd, &word, sizeof(word)) < 0) {
        /* nothing said since the last pass */
    }
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, wake_fd, &event);
    for (Py_ssize_t i = 0; i < registered; i++) {
        Relay *relay = registry[i];
        /* held, so that the pass cannot free it under the thread */
        Py_INCREF(relay);
        snapshot[i] = relay;
        relay->declined = 0;
        event.data.ptr = relay;
        epoll_ctl(epoll_fd, EPOLL_CTL_ADD, relay->in_fd, &event);
    }
    snapshot_count = registered;
    running = 1;
    pause_passes += 1;
    pthread_cond_signal(&wake);
    pthread_mutex_unlock(&lock);
    Py_RETURN_TRUE;
no:
    pthread_mutex_unlock(&lock);
    Py_RETURN_FALSE;
}

static PyObject *
pause_stop(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&lock);
    if (!running) {
        pthread_mutex_unlock(&lock);
        Py_RETURN_FALSE;
    }
    running = 0;
    uint64_t one = 1;
    if (write(wake_fd, &one, sizeof(one)) < 0) {
        /* the counter is full: the thread is awake anyway */
    }
    while (!parked)
        pthread_cond_wait(&parked_cond, &lock);
    close(epoll_fd);
    epoll_fd = -1;
    Py_ssize_t count = snapshot_count;
    snapshot_count = 0;
    pthread_mutex_unlock(&lock);
    int any = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Tap *tap = (Tap *)snapshot[i]->tap;
        if (tap == NULL || tap->head == NULL)
            continue;
        for (Entry *entry = tap->head; entry != NULL; entry = entry->next)
            if (!entry->owned) {
                Py_INCREF(entry->relay);
                entry->owned = 1;
            }
        if (waiting != NULL && PyList_Append(waiting, (PyObject *)tap) < 0)
            PyErr_Clear(); /* handed on with the socket's next datagram */
        any = 1;
    }
    for (Py_ssize_t i = 0; i < count; i++)
        Py_DECREF(snapshot[i]);
    return PyBool_FromLong(any);
}

static PyObject *
pause_figures(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("(KKKn)", pause_passes, pause_relayed, pause_waited, registered);
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
    if (self->tap != NULL && ((Tap *)self->tap)->engaged == self)
        ((Tap *)self->tap)->engaged = NULL;
    pthread_mutex_lock(&lock);
    registry_remove(self);
    if (self->in_fd >= 0) {
        if (epoll_fd >= 0)
            epoll_ctl(epoll_fd, EPOLL_CTL_DEL, self->in_fd, NULL);
        close(self->in_fd);
        self->in_fd = -1;
    }
    if (self->fd >= 0) {
        close(self->fd);
        self->fd = -1;
    }
    self->unprotect_call = NULL;
    self->protect_call = NULL;
    pthread_mutex_unlock(&lock);
}

/* (host, port) or (host, port, flowinfo, scope_id) of ``family``: 1, or 0 when it is not one */
static int
socket_address(PyObject *address, int family, struct sockaddr_storage *to, socklen_t *length)
{
    const char *host;
    int port;
    unsigned int flowinfo = 0, scope_id = 0;
    if (!PyTuple_Check(address) ||
        !PyArg_ParseTuple(address, "si|II", &host, &port, &flowinfo, &scope_id)) {
        PyErr_Clear();
        return 0;
    }
    if (port < 0 || port > 65535)
        return 0;
    memset(to, 0, sizeof(*to));
    if (family == AF_INET) {
        struct sockaddr_in *in4 = (struct sockaddr_in *)to;
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &in4->sin_addr) != 1)
            return 0;
        *length = sizeof(*in4);
        return 1;
    }
    if (family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)to;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        in6->sin6_flowinfo = htonl(flowinfo);
        in6->sin6_scope_id = scope_id;
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
            return 0;
        *length = sizeof(*in6);
        return 1;
    }
    return 0;
}

/* the receiving socket, for the collector's pauses: 1 registered, 0 not, -1 error */
static int
relay_bind_receiving(Relay *self, int in_fd, int in_family, PyObject *tap)
{
    if (in_fd < 0 || self->fd < 0 || tap == NULL || !PyObject_TypeCheck(tap, &TapType))
        return 0;
    if ((self->unprotect_call == NULL && self->unprotect != Py_None) ||
        (self->protect_call == NULL && self->protect != Py_None))
        return 0; /* a step needs Python */
    self->peer_address_length = 0;
    if (self->peer != Py_None &&
        !socket_address(self->peer, in_family, &self->peer_address, &self->peer_address_length))
        return 0;
    int copy = fcntl(in_fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    Py_XSETREF(self->tap, Py_NewRef(tap));
    pthread_mutex_lock(&lock);
    int failed = registry_add(self);
    if (!failed)
        self->in_fd = copy;
    pthread_mutex_unlock(&lock);
    if (failed) {
        close(copy);
        PyErr_NoMemory();
        return -1;
    }
    ((Tap *)tap)->engaged = self;
    return 1;
}

/* _bind_native(unprotect_call, unprotect_context, unprotect_room, protect_call,
 *              protect_context, protect_room, fd, family[, in_fd, in_family, tap]):
 * addresses of 0 and an fd of -1 leave that step to the Python callables; the
 * descriptors are duplicated. in_fd (with the Tap its datagrams go to): the
 * receiving socket, which the thread reads in the collector's pauses. True
 * when sending goes the native way. */
static PyObject *
Relay_bind_native(Relay *self, PyObject *args)
{
    unsigned long long unprotect_call, unprotect_context, protect_call, protect_context;
    Py_ssize_t unprotect_room, protect_room;
    int fd, family, in_fd = -1, in_family = 0;
    PyObject *tap = NULL;
    if (!PyArg_ParseTuple(args, "KKnKKnii|iiO", &unprotect_call, &unprotect_context,
                          &unprotect_room, &protect_call, &protect_context, &protect_room, &fd,
                          &family, &in_fd, &in_family, &tap))
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
    if (fd < 0 ||
        !socket_address(self->address, family, &self->destination, &self->destination_length))
        Py_RETURN_FALSE;
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    self->fd = copy;
    if (relay_bind_receiving(self, in_fd, in_family, tap) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *
Relay_hold(Relay *self, PyObject *held)
{
    int value = PyObject_IsTrue(held);
    if (value < 0)
        return NULL;
    self->held = value;
    Py_RETURN_NONE;
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

static PyObject *
Relay_get_receiving(Relay *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->in_fd >= 0);
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
    Py_VISIT(self->tap);
    return 0;
}

static int
Relay_clear(Relay *self)
{
    relay_unbind(self); /* out of the registry before its references go */
    Py_CLEAR(self->tap);
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
    self->in_fd = -1;
    self->slot = -1;
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
    {"receiving", (getter)Relay_get_receiving, NULL,
     "whether the relay's receiving socket is read in the collector's pauses", NULL},
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
    {"_hold", (PyCFunction)Relay_hold, METH_O,
     "while held, the collector-pass thread leaves the relay to Python (its sync)"},
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

/* the leg's engaged circuit takes the datagram, or the fallback does */
static PyObject *
tap_offer(Tap *self, PyObject *args, PyObject *kwargs)
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

/* as the event loop's datagram transports give it */
static PyObject *
address_object(const struct sockaddr_storage *from, socklen_t length)
{
    char host[INET6_ADDRSTRLEN];
    if (length >= sizeof(struct sockaddr_in) && from->ss_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)from;
        if (inet_ntop(AF_INET, &in4->sin_addr, host, sizeof(host)) == NULL)
            Py_RETURN_NONE;
        return Py_BuildValue("(si)", host, ntohs(in4->sin_port));
    }
    if (length >= sizeof(struct sockaddr_in6) && from->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)from;
        if (inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host)) == NULL)
            Py_RETURN_NONE;
        return Py_BuildValue("(siII)", host, ntohs(in6->sin6_port), ntohl(in6->sin6_flowinfo),
                             in6->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

/* what a pause left: 0 done (or lost as the leg would), -1 error */
static int
entry_deliver(Tap *self, Entry *entry)
{
    Relay *relay = entry->relay;
    PyObject *result = NULL;
    switch (entry->kind) {
    case ENTRY_RAW: {
        PyObject *data = PyBytes_FromStringAndSize((const char *)entry->data, entry->length);
        PyObject *addr = data ? address_object(&entry->from, entry->from_length) : NULL;
        PyObject *args = addr ? PyTuple_Pack(2, data, addr) : NULL;
        Py_XDECREF(data);
        Py_XDECREF(addr);
        if (args == NULL)
            return -1;
        result = tap_offer(self, args, NULL);
        Py_DECREF(args);
        break;
    }
    case ENTRY_CLEAR: {
        if (relay->in_fd < 0)
            return 0; /* released since: lost, as a packet take unprotects and releases */
        unsigned char out[BUFFER_SIZE];
        Py_ssize_t out_size;
        return relay_forward(relay, entry->data, entry->length, entry->size, 1, out, &out_size) <
                       0
                   ? -1
                   : 0;
    }
    case ENTRY_SEND: {
        PyObject *data = PyBytes_FromStringAndSize((const char *)entry->data, entry->length);
        if (data == NULL)
            return -1;
        result = PyObject_CallFunctionObjArgs(relay->sendto, data, relay->address, NULL);
        Py_DECREF(data);
        break;
    }
    default: /* ENTRY_RELEASE */
        if (relay->in_fd < 0)
            return 0;
        result = PyObject_CallMethodNoArgs((PyObject *)relay, str_release);
    }
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

static void
entry_free(Entry *entry)
{
    if (entry->owned)
        Py_DECREF(entry->relay);
    PyMem_RawFree(entry);
}

/* hand what a pause left to Python, in order (not while a pass runs) */
static int
tap_drain(Tap *self)
{
    while (self->head != NULL && self->head->owned) {
        Entry *entry = self->head;
        self->head = entry->next;
        if (self->head == NULL)
            self->tail = NULL;
        self->pending -= 1;
        int result = entry_deliver(self, entry);
        entry_free(entry);
        if (result < 0)
            return -1;
    }
    return 0;
}

static PyObject *
Tap_call(Tap *self, PyObject *args, PyObject *kwargs)
{
    /* what waited since a pause goes first */
    if (self->head != NULL && tap_drain(self) < 0)
        return NULL;
    return tap_offer(self, args, kwargs);
}

static PyObject *
drain(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    if (waiting == NULL || PyList_GET_SIZE(waiting) == 0)
        Py_RETURN_NONE;
    PyObject *taps = waiting;
    waiting = PyList_New(0);
    if (waiting == NULL) {
        waiting = taps;
        return NULL;
    }
    /* every Tap is drained; the first error is raised after */
    FirstError first = {NULL};
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(taps); i++)
        if (tap_drain((Tap *)PyList_GET_ITEM(taps, i)) < 0)
            first_error_keep(&first);
    Py_DECREF(taps);
    if (first_error_raise(&first) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/*
 * Reading a media socket (rtc.udp.SocketTransport: a Reader per socket, all
 * of a loop's in its Hub, below). The loops' own datagram transports read
 * until the socket is empty, one system call more for each readiness, and
 * make a bytes object, an address tuple with the host as a string, and a
 * method lookup for each datagram (bench/README.md, round 14). Here one
 * recvmmsg takes what the socket holds, and a datagram that the socket's
 * Tap's engaged circuit relays goes through it natively, without ever
 * becoming a Python object; the rest goes to the protocol's datagram_received
 * as the loop's transports give it.
 */
#define RECEIVE_BATCH 8

static PyObject *str_datagram_received = NULL;
static PyObject *str_error_received = NULL;
/* the loop's thread only (the collector-pass thread has its own); the
 * message headers point at them once (receive_setup), only the address
 * lengths are set again for each recvmmsg */
static unsigned char receive_buffers[RECEIVE_BATCH][RECEIVE_SIZE];
static struct mmsghdr receive_messages[RECEIVE_BATCH];
static struct iovec receive_vectors[RECEIVE_BATCH];
static struct sockaddr_storage receive_from[RECEIVE_BATCH];

static void
receive_setup(void)
{
    for (int i = 0; i < RECEIVE_BATCH; i++) {
        receive_vectors[i].iov_base = receive_buffers[i];
        receive_vectors[i].iov_len = RECEIVE_SIZE;
        receive_messages[i].msg_hdr.msg_name = &receive_from[i];
        receive_messages[i].msg_hdr.msg_iov = &receive_vectors[i];
        receive_messages[i].msg_hdr.msg_iovlen = 1;
    }
}

/* 1: relayed natively (or dropped as the leg would); 0: for the Tap's Python
 * call (no circuit bound to this socket, or not its stream); -1: error. A
 * circuit bound to the socket (relay_bind_receiving) is the leg's _circuit_in
 * and has its peer as a sockaddr and native steps. */
static int
tap_take_native(Tap *self, const unsigned char *in, Py_ssize_t size,
                const struct sockaddr_storage *from)
{
    if (self->head != NULL && tap_drain(self) < 0)
        return -1;
    Relay *relay = self->engaged;
    if (relay == NULL || !relay_continues(relay, in, size) || !same_peer(relay, from))
        return 0;
    Py_INCREF(relay); /* a release in the step may drop the leg's reference */
    int result = relay_pass(relay, in, size);
    Py_DECREF(relay);
    return result;
}

/* a datagram for Python: callback(data, addr) */
static int
receive_call(PyObject *callback, const unsigned char *in, Py_ssize_t size,
             const struct sockaddr_storage *from, socklen_t from_length)
{
    PyObject *data = PyBytes_FromStringAndSize((const char *)in, size);
    if (data == NULL)
        return -1;
    PyObject *addr = address_object(from, from_length);
    if (addr == NULL) {
        Py_DECREF(data);
        return -1;
    }
    PyObject *args[2] = {data, addr};
    PyObject *result = PyObject_Vectorcall(callback, args, 2, NULL);
    Py_DECREF(data);
    Py_DECREF(addr);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* Reader(sock, protocol): the loop's reader of a socket (rtc.udp.SocketTransport) */
typedef struct {
    PyObject_HEAD
    int fd;
    PyObject *sock; /* held: while the loop reads it, it is not closed under it */
    PyObject *protocol;
    PyObject *callback; /* protocol.datagram_received when it was connected */
    void *hub;          /* the Hub whose epoll has it, or NULL */
} Reader;

static int
reader_connect(Reader *self, PyObject *protocol)
{
    PyObject *callback = PyObject_GetAttr(protocol, str_datagram_received);
    if (callback == NULL)
        return -1;
    Py_XSETREF(self->protocol, Py_NewRef(protocol));
    Py_XSETREF(self->callback, callback);
    return 0;
}

/* what the socket holds, to the protocol: 0, or -1 with the first error raised */
static int
reader_receive(Reader *self)
{
    if (self->callback == NULL) {
        PyErr_SetString(PyExc_ValueError, "a reader with no protocol");
        return -1;
    }
    struct mmsghdr *messages = receive_messages;
    for (int i = 0; i < RECEIVE_BATCH; i++)
        messages[i].msg_hdr.msg_namelen = sizeof(receive_from[i]);
    int got = recvmmsg(self->fd, messages, RECEIVE_BATCH, MSG_DONTWAIT, NULL);
    if (got < 0) {
        int error = errno;
        if (error == EAGAIN || error == EWOULDBLOCK || error == EINTR)
            return 0;
        /* an ICMP report, as the loop's transports hand it on (OSError(errno,
         * ...) is the subclass the number names) */
        PyObject *exception = PyObject_CallFunction(PyExc_OSError, "is", error, strerror(error));
        if (exception == NULL)
            return -1;
        PyObject *result =
            PyObject_CallMethodOneArg(self->protocol, str_error_received, exception);
        Py_DECREF(exception);
        if (result == NULL)
            return -1;
        Py_DECREF(result);
        return 0;
    }
    /* a callback may close the transport and connect another protocol: this
     * batch goes on to the one it was read for */
    PyObject *callback = Py_NewRef(self->callback);
    /* every datagram is handed on; the first error is raised after */
    FirstError first = {NULL};
    for (int i = 0; i < got; i++) {
        const unsigned char *in = receive_buffers[i];
        Py_ssize_t size = messages[i].msg_len;
        int result = 0;
        if (Py_IS_TYPE(callback, &TapType))
            result = tap_take_native((Tap *)callback, in, size, &receive_from[i]);
        if (result == 0)
            result = receive_call(callback, in, size, &receive_from[i],
                                  messages[i].msg_hdr.msg_namelen);
        if (result < 0)
            first_error_keep(&first);
    }
    Py_DECREF(callback);
    return first_error_raise(&first);
}

static int
Reader_init(Reader *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"sock", "protocol", NULL};
    PyObject *sock, *protocol;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO", keywords, &sock, &protocol))
        return -1;
    int fd = PyObject_AsFileDescriptor(sock);
    if (fd < 0)
        return -1;
    if (reader_connect(self, protocol) < 0)
        return -1;
    self->fd = fd;
    Py_XSETREF(self->sock, Py_NewRef(sock));
    return 0;
}

static PyObject *
Reader_get_protocol(Reader *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->protocol ? self->protocol : Py_None);
}

static int
Reader_set_protocol(Reader *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "a reader's protocol cannot be deleted");
        return -1;
    }
    return reader_connect(self, value);
}

static int
Reader_traverse(Reader *self, visitproc visit, void *arg)
{
    Py_VISIT(self->sock);
    Py_VISIT(self->protocol);
    Py_VISIT(self->callback);
    return 0;
}

static int
Reader_clear(Reader *self)
{
    Py_CLEAR(self->sock);
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->callback);
    return 0;
}

static void
Reader_dealloc(Reader *self)
{
    PyObject_GC_UnTrack(self);
    Reader_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyGetSetDef Reader_getset[] = {
    {"protocol", (getter)Reader_get_protocol, (setter)Reader_set_protocol,
     "the protocol; setting it takes its datagram_received as it is then", NULL},
    {NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._relay.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Reader(sock, protocol): reads the socket for a Hub, to the protocol's "
              "datagram_received as it was when connected (a Tap's circuit first, natively).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_traverse = (traverseproc)Reader_traverse,
    .tp_clear = (inquiry)Reader_clear,
    .tp_getset = Reader_getset,
};

/*
 * Hub(): one epoll for the media sockets' Readers, which the loop reads as one
 * descriptor (rtc.udp). With one datagram per call per 20 ms every socket is
 * ready on its own, and the loop's per-readiness work (libuv's watcher, uvloop's
 * handle and its call into Python) was paid per datagram; calling the Hub
 * reads every socket ready at that moment in one go.
 */
#define HUB_EVENTS 256

typedef struct {
    PyObject_HEAD
    int epoll;
    PyObject *readers; /* set: those in the epoll, held */
} Hub;

static PyTypeObject HubType;

static PyObject *
Hub_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    Hub *self = (Hub *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->epoll = -1;
    if ((self->readers = PySet_New(NULL)) == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    if ((self->epoll = epoll_create1(EPOLL_CLOEXEC)) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *
Hub_add(Hub *self, PyObject *reader)
{
    if (!PyObject_TypeCheck(reader, &ReaderType)) {
        PyErr_SetString(PyExc_TypeError, "a Reader");
        return NULL;
    }
    Reader *r = (Reader *)reader;
    if (r->hub != NULL) {
        PyErr_SetString(PyExc_ValueError, "the reader is in a hub already");
        return NULL;
    }
    if (PySet_Add(self->readers, reader) < 0)
        return NULL;
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = r};
    if (epoll_ctl(self->epoll, EPOLL_CTL_ADD, r->fd, &event) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        PySet_Discard(self->readers, reader);
        return NULL;
    }
    r->hub = self;
    Py_RETURN_NONE;
}

static PyObject *
Hub_remove(Hub *self, PyObject *reader)
{
    if (!PyObject_TypeCheck(reader, &ReaderType) || ((Reader *)reader)->hub != self)
        Py_RETURN_NONE;
    Reader *r = (Reader *)reader;
    epoll_ctl(self->epoll, EPOLL_CTL_DEL, r->fd, NULL);
    r->hub = NULL;
    if (PySet_Discard(self->readers, reader) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* the readers whose sockets are ready, each read as its own reader would */
static PyObject *
Hub_call(Hub *self, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    struct epoll_event events[HUB_EVENTS];
    int ready = epoll_wait(self->epoll, events, HUB_EVENTS, 0);
    if (ready < 0) {
        if (errno == EINTR)
            Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    /* held for the round: a callback may take a reader out (a transport closed) */
    for (int i = 0; i < ready; i++)
        Py_INCREF((PyObject *)events[i].data.ptr);
    FirstError first = {NULL};
    for (int i = 0; i < ready; i++) {
        Reader *reader = events[i].data.ptr;
        if (reader->hub != self)
            continue; /* taken out by an earlier one's callback */
        if (reader_receive(reader) < 0)
            first_error_keep(&first);
    }
    for (int i = 0; i < ready; i++)
        Py_DECREF((PyObject *)events[i].data.ptr);
    if (first_error_raise(&first) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Hub_fileno(Hub *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(self->epoll);
}

static int
Hub_traverse(Hub *self, visitproc visit, void *arg)
{
    Py_VISIT(self->readers);
    return 0;
}

static int
hub_clear_readers(Hub *self)
{
    if (self->readers != NULL) {
        PyObject *iterator = PyObject_GetIter(self->readers);
        if (iterator == NULL)
            return -1;
        PyObject *reader;
        while ((reader = PyIter_Next(iterator)) != NULL) {
            ((Reader *)reader)->hub = NULL;
            Py_DECREF(reader);
        }
        Py_DECREF(iterator);
        if (PyErr_Occurred())
            return -1;
    }
    Py_CLEAR(self->readers);
    return 0;
}

static int
Hub_clear(Hub *self)
{
    if (hub_clear_readers(self) < 0)
        PyErr_Clear();
    return 0;
}

static void
Hub_dealloc(Hub *self)
{
    PyObject_GC_UnTrack(self);
    Hub_clear(self);
    if (self->epoll >= 0)
        close(self->epoll);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Hub_methods[] = {
    {"add", (PyCFunction)Hub_add, METH_O, "add(reader): read when the hub is called"},
    {"remove", (PyCFunction)Hub_remove, METH_O, "remove(reader): no more (none if not in it)"},
    {"fileno", (PyCFunction)Hub_fileno, METH_NOARGS, "the epoll's descriptor, for the loop"},
    {NULL},
};

static Py_ssize_t
Hub_length(Hub *self)
{
    return PySet_GET_SIZE(self->readers);
}

static PySequenceMethods Hub_as_sequence = {
    .sq_length = (lenfunc)Hub_length,
};

static PyTypeObject HubType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._relay.Hub",
    .tp_basicsize = sizeof(Hub),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Hub()(): the ready sockets of the Readers added, each read in one go.",
    .tp_new = Hub_new,
    .tp_call = (ternaryfunc)Hub_call,
    .tp_dealloc = (destructor)Hub_dealloc,
    .tp_traverse = (traverseproc)Hub_traverse,
    .tp_clear = (inquiry)Hub_clear,
    .tp_methods = Hub_methods,
    .tp_as_sequence = &Hub_as_sequence,
};

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
    while (self->head != NULL) {
        Entry *entry = self->head;
        self->head = entry->next;
        entry_free(entry);
    }
    self->tail = NULL;
    self->pending = 0;
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
    {"pause_start", pause_start, METH_NOARGS,
     "a collector's pass starts: the thread relays the registered relays' streams; "
     "True when it does"},
    {"pause_stop", pause_stop, METH_NOARGS,
     "the pass is over: the thread stops; True when datagrams wait for drain()"},
    {"drain", drain, METH_NOARGS, "hand what the last pauses left to Python"},
    {"pause_figures", pause_figures, METH_NOARGS,
     "(passes served, packets relayed in them, datagrams left for Python, relays registered)"},
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
    str_datagram_received = PyUnicode_InternFromString("datagram_received");
    str_error_received = PyUnicode_InternFromString("error_received");
    if (str_circuit_in == NULL || str_release == NULL || str_datagram_received == NULL ||
        str_error_received == NULL)
        return NULL;
    if (waiting == NULL && (waiting = PyList_New(0)) == NULL)
        return NULL;
    receive_setup();
    if (pthread_atfork(NULL, NULL, after_fork) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (PyType_Ready(&RelayType) < 0 || PyType_Ready(&TapType) < 0 ||
        PyType_Ready(&ReaderType) < 0 || PyType_Ready(&HubType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&relay_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Relay", (PyObject *)&RelayType) < 0 ||
        PyModule_AddObjectRef(module, "Tap", (PyObject *)&TapType) < 0 ||
        PyModule_AddObjectRef(module, "Reader", (PyObject *)&ReaderType) < 0 ||
        PyModule_AddObjectRef(module, "Hub", (PyObject *)&HubType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
