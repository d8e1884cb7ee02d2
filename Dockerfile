# syntax=docker/dockerfile:1
# hasta-la-vista: one bundled file (dist/main.js) on a distroless Node.js runtime.
#   docker build -t hasta-la-vista .
#   docker build --build-arg REVISION=$(git rev-parse HEAD) --build-arg CREATED=$(date -u +%FT%TZ) -t hasta-la-vista .
# Node's major is pinned in both stages and must match: the test suite also runs on this major in CI.

FROM node:22-bookworm-slim AS build
WORKDIR /src
# Dependencies first, so source edits do not invalidate the npm ci layer.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts/ scripts/
COPY agent/ agent/
# The same build command as the README: esbuild bundles the agent and every dependency into dist/,
# with a dist/package.json that tells node the bundle is ESM.
RUN npm run build

FROM gcr.io/distroless/nodejs22-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="hasta-la-vista" \
      org.opencontainers.image.description="Takes a dying EC2 node out of every Kubernetes load balancer before it dies, and waits until it is out." \
      org.opencontainers.image.url="https://github.com/hasta-la-vista/hasta-la-vista" \
      org.opencontainers.image.source="https://github.com/hasta-la-vista/hasta-la-vista" \
      org.opencontainers.image.documentation="https://github.com/hasta-la-vista/hasta-la-vista#readme" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="gcr.io/distroless/nodejs22-debian12:nonroot"
WORKDIR /app
# Only the bundle (with its source map and third-party licences): no node_modules, no sources.
COPY --from=build /src/dist/ /app/
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
EXPOSE 9740
# No --enable-source-maps: parsing the 8 MB map would cost every node memory for prettier stack traces.
ENTRYPOINT ["/nodejs/bin/node", "/app/main.js"]
