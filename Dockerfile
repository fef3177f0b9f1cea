# webrtc-sip-gateway: one process, one config file.
#   docker compose up --build     (see docker-compose.yml; config from ./config/gateway.toml)
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY sip ./sip
COPY rtc ./rtc
RUN pip install . && rm -rf /src

RUN useradd --system --no-create-home --shell /usr/sbin/nologin gateway
USER gateway
WORKDIR /

# HTTP/WebSocket 8080, SIP 5060 UDP+TCP, RTP from the configured [media] port range.
EXPOSE 8080/tcp 5060/udp 5060/tcp

ENTRYPOINT ["webrtc-gateway"]
CMD ["--config", "/etc/webrtc-gateway/gateway.toml"]
