# One image for every service: `crm serve customers|interactions|loyalty`,
# `crm migrate`, `crm topics`. Build from the repository root:
#   docker build -t open-crm:0.1.0 .
# See docs/operations.md.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/crm
# Dependencies first (pinned by constraints.txt), so code changes reuse this layer.
COPY pyproject.toml constraints.txt README.md ./
COPY crm crm
COPY contracts contracts
COPY crm_runtime crm_runtime
COPY services services
COPY crm_app crm_app
RUN /opt/crm/bin/pip install -c constraints.txt . \
    && /opt/crm/bin/crm version

FROM python:3.11-slim
LABEL org.opencontainers.image.title="open-crm" \
      org.opencontainers.image.description="Event-driven CRM services (customers, interactions, loyalty)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 crm \
    && useradd --system --uid 10001 --gid crm --home-dir /home/crm --create-home \
       --shell /usr/sbin/nologin crm
COPY --from=build /opt/crm /opt/crm
ENV PATH=/opt/crm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CRM_GRPC_HOST=0.0.0.0 \
    CRM_DATA_DIR=/tmp/crm
WORKDIR /home/crm
USER 10001:10001
# gRPC (customers, interactions, loyalty) and their /metrics ports.
EXPOSE 50051 50052 50053 9101 9102 9103
ENTRYPOINT ["crm"]
CMD ["serve", "customers"]
