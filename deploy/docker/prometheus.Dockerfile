# tag: llmgw-local/prometheus:2.42
# Stand-in for prom/prometheus (compose.yml's PROMETHEUS_IMAGE) from Debian's
# prometheus 2.42: the binary as entrypoint (compose passes the flags), /prometheus
# for the data, wget for the healthcheck, run as nobody as upstream does.
ARG BASE=llmgw-local/python:3.11
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus wget \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown nobody:nogroup /prometheus
WORKDIR /prometheus
USER nobody
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
