# tag: llmgw-local/redis:7.0
# Stand-in for redis:7.4-alpine (compose.yml's REDIS_IMAGE) from Debian's
# redis-server 7.0: the same command line, /data, and redis-cli for the healthcheck.
# As upstream's entrypoint does, a redis-server run with no config file gets
# --protected-mode no (the container network is its boundary, not loopback).
ARG BASE=llmgw-local/python:3.11
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["/bin/sh", "-c", "if [ \"$1\" = redis-server ]; then shift; exec redis-server --protected-mode no \"$@\"; fi; exec \"$@\"", "entrypoint"]
CMD ["redis-server"]
