# The build stage's base on a machine without registry access: Debian's Python
# plus the host's pip setup (deploy/docker/base-images.sh fills the context).
ARG BASE=llmgw-local/python:3.11
FROM ${BASE}
COPY ca-certificates.crt /etc/llmgw/ca-certificates.crt
COPY wheels/ /opt/wheels/
RUN printf '[global]\ncert = /etc/llmgw/ca-certificates.crt\nfind-links = /opt/wheels\ndisable-pip-version-check = true\ndefault-timeout = 180\n' > /etc/pip.conf
ENV PIP_CONFIG_FILE=/etc/pip.conf SSL_CERT_FILE=/etc/llmgw/ca-certificates.crt
