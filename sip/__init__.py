"""SIP user agent. Everything outside sip.aio is sans-I/O."""
