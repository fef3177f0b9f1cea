# webrtc-sip-gateway: one process, one config file.
#   docker compose up --build     (see docker-compose.yml; config from ./config/gateway.toml)

# The wheel is built where a C compiler is (rtc._relay, the pass-through calls'
# per-packet step in C); the image that runs it has none.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY sip ./sip
COPY rtc ./rtc
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python -c "import glob, zipfile; assert any(n.startswith('rtc/_relay') \
    and n.endswith('.so') for w in glob.glob('/wheels/*.whl') for n in zipfile.ZipFile(w).namelist())"

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels

RUN useradd --system --no-create-home --shell /usr/sbin/nologin gateway
USER gateway
WORKDIR /

# HTTP/WebSocket 8080, SIP 5060 UDP+TCP, RTP from the configured [media] port range.
EXPOSE 8080/tcp 5060/udp 5060/tcp

ENTRYPOINT ["webrtc-gateway"]
CMD ["--config", "/etc/webrtc-gateway/gateway.toml"]
