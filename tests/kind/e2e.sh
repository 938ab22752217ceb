#!/usr/bin/env bash
# End-to-end test of this project's ztunnel and CNI agent on a throw-away kind cluster, with
# Istio's own istiod (ambient profile) as the control plane:
#
#   1. kind cluster (1 control plane + 2 workers), Gateway API CRDs;
#   2. istio/base + istio/istiod --set profile=ambient from Istio's Helm repository (Istio's
#      ztunnel and cni charts are NOT installed: ours replace them);
#   3. our images (make images) loaded into kind, our charts/cni and charts/ztunnel installed;
#   4. sleep (curl) and httpbin in a namespace labelled istio.io/dataplane-mode=ambient, on
#      different workers so the traffic crosses nodes over HBONE;
#   5. asserts: the pods are enrolled (ambient.istio.io/redirection=enabled), sleep → httpbin
#      answers 200, ztunnel's metrics show the connection as mutual_tls between the two SPIFFE
#      identities, a deny-all AuthorizationPolicy makes curl fail with exit 56 (connection reset),
#      and removing it restores traffic.
#
# Needs: docker (a running engine), kind, helm (v3.8+), kubectl, network access to
# registry-1.docker.io, github.com and istio-release.storage.googleapis.com.
# It cannot run on the project's CI machines (no Docker engine); run it with `make e2e-kind`.
#
# Environment:
#   CLUSTER              kind cluster name (default ambient-e2e; deleted at exit)
#   KEEP_CLUSTER=1       keep the cluster after the run (for debugging)
#   HUB, TAG             our images, <HUB>/{ztunnel,cni-agent}:<TAG> (default localhost/ambient, dev)
#   SKIP_BUILD=1         do not run `make images` (the images must exist locally)
#   ISTIO_VERSION        Istio Helm chart version for base and istiod (default 1.27.0)
#   GATEWAY_API_VERSION  Gateway API release for the CRDs (default v1.3.0)
#   KIND_NODE_IMAGE      kind node image (default: kind's own default)
#   DOCKER               docker client (default docker)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${CLUSTER:-ambient-e2e}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
HUB="${HUB:-localhost/ambient}"
TAG="${TAG:-dev}"
SKIP_BUILD="${SKIP_BUILD:-0}"
ISTIO_VERSION="${ISTIO_VERSION:-1.27.0}"
GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.3.0}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-}"
DOCKER="${DOCKER:-docker}"

ISTIO_NS=istio-system
APP_NS=ambient-e2e
TRUST_DOMAIN=cluster.local
ISTIO_REPO=https://istio-release.storage.googleapis.com/charts
CURL_IMAGE=curlimages/curl:8.11.1
HTTPBIN_IMAGE=mccutchen/go-httpbin:v2.15.0

CONTEXT="kind-${CLUSTER}"
CLUSTER_CREATED=0
STEP=""

log() { printf '\n[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() {
    printf '\n[e2e] FAILED%s: %s\n' "${STEP:+ during \"$STEP\"}" "$*" >&2
    exit 1
}
step() {
    STEP="$*"
    log "$STEP"
}
kc() { kubectl --context "$CONTEXT" "$@"; }

# ------------------------------------------------------------------ cleanup
diagnostics() {
    printf '\n[e2e] ---- diagnostics ----\n' >&2
    kc get nodes -o wide >&2 || true
    kc get pods -A -o wide >&2 || true
    kc -n "$APP_NS" get pods -o yaml 2>/dev/null | grep -E 'name:|ambient.istio.io|phase' >&2 || true
    for sel in app=ambient-cni-node app=ztunnel app=istiod; do
        printf '\n[e2e] ---- logs %s ----\n' "$sel" >&2
        kc -n "$ISTIO_NS" logs -l "$sel" --all-containers --prefix --tail=80 >&2 || true
    done
    kc get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -40 >&2 || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((status != 0)) && ((CLUSTER_CREATED)); then
        diagnostics
    fi
    if ((CLUSTER_CREATED)); then
        if [[ "$KEEP_CLUSTER" == 1 ]]; then
            log "keeping cluster $CLUSTER (KEEP_CLUSTER=1); delete it with: kind delete cluster --name $CLUSTER"
        else
            log "deleting kind cluster $CLUSTER"
            kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
        fi
    fi
    if ((status == 0)); then
        log "PASSED"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ helpers
# retry <attempts> <seconds between> <command...>: succeeds as soon as the command does.
retry() {
    local attempts=$1 pause=$2 i
    shift 2
    for ((i = 1; i <= attempts; i++)); do
        if "$@"; then
            return 0
        fi
        sleep "$pause"
    done
    return 1
}

# curl from the sleep pod to httpbin; prints the HTTP status, returns curl's exit code.
curl_httpbin() {
    kc -n "$APP_NS" exec deploy/sleep -c sleep -- \
        curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "http://httpbin.${APP_NS}:8000/get"
}

expect_http_200() {
    local code
    code="$(curl_httpbin 2>/dev/null)" || return 1
    [[ "$code" == 200 ]]
}

# Succeeds when curl exits with exactly 56 (receive failure: the destination ztunnel reset the
# connection because the policy denies it).
expect_curl_56() {
    local rc=0
    curl_httpbin >/dev/null 2>&1 || rc=$?
    LAST_CURL_RC=$rc
    ((rc == 56))
}

# All ztunnels' Prometheus text, through the API server's pod proxy (the image has no shell).
ztunnel_metrics() {
    local pod
    for pod in $(kc -n "$ISTIO_NS" get pods -l app=ztunnel -o jsonpath='{.items[*].metadata.name}'); do
        kc get --raw "/api/v1/namespaces/${ISTIO_NS}/pods/${pod}:15020/proxy/metrics"
    done
}

# A connection from sleep to httpbin recorded as mutual TLS with both SPIFFE identities.
has_mtls_metric() {
    local src="spiffe://${TRUST_DOMAIN}/ns/${APP_NS}/sa/sleep"
    local dst="spiffe://${TRUST_DOMAIN}/ns/${APP_NS}/sa/httpbin"
    local metrics
    metrics="$(ztunnel_metrics)" || return 1
    # No `grep -q`: exiting early would SIGPIPE the earlier stages and fail the pipeline.
    grep '^istio_tcp_connections_opened_total{' <<<"$metrics" |
        grep 'connection_security_policy="mutual_tls"' |
        grep "source_principal=\"${src}\"" |
        grep "destination_principal=\"${dst}\"" >/dev/null
}

# ------------------------------------------------------------------ 0. prerequisites
step "checking prerequisites"
for tool in "$DOCKER" kind helm kubectl; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found on PATH (this test needs docker, kind, helm and kubectl)"
done
"$DOCKER" info >/dev/null 2>&1 || die "no Docker engine reachable ('$DOCKER info' failed): start dockerd"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    die "a kind cluster named $CLUSTER already exists: delete it (kind delete cluster --name $CLUSTER) or set CLUSTER=..."
fi

# ------------------------------------------------------------------ 1. images
if [[ "$SKIP_BUILD" != 1 ]]; then
    step "building images ($HUB/*:$TAG)"
    make -C "$ROOT" images HUB="$HUB" TAG="$TAG" DOCKER="$DOCKER" || die "make images failed"
fi
for image in ztunnel cni-agent; do
    "$DOCKER" image inspect "$HUB/$image:$TAG" >/dev/null 2>&1 ||
        die "image $HUB/$image:$TAG not found locally (run without SKIP_BUILD=1, or make images HUB=$HUB TAG=$TAG)"
done

# ------------------------------------------------------------------ 2. cluster
step "creating kind cluster $CLUSTER (1 control plane, 2 workers)"
kind_args=(create cluster --name "$CLUSTER" --wait 180s --config -)
if [[ -n "$KIND_NODE_IMAGE" ]]; then
    kind_args+=(--image "$KIND_NODE_IMAGE")
fi
CLUSTER_CREATED=1
kind "${kind_args[@]}" <<'EOF' || die "kind create cluster failed"
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
  - role: worker
EOF

step "loading our images into the cluster"
for image in ztunnel cni-agent; do
    kind load docker-image --name "$CLUSTER" "$HUB/$image:$TAG" || die "kind load of $HUB/$image:$TAG failed"
done

step "installing the Gateway API CRDs ($GATEWAY_API_VERSION)"
kc apply --server-side -f \
    "https://github.com/kubernetes-sigs/gateway-api/releases/download/${GATEWAY_API_VERSION}/standard-install.yaml" ||
    die "cannot install the Gateway API CRDs"

# ------------------------------------------------------------------ 3. istiod
step "installing istio/base and istio/istiod $ISTIO_VERSION (profile=ambient)"
helm repo add istio "$ISTIO_REPO" --force-update >/dev/null || die "cannot add the Istio Helm repository $ISTIO_REPO"
helm repo update istio >/dev/null || die "cannot update the Istio Helm repository"
helm --kube-context "$CONTEXT" install istio-base istio/base --version "$ISTIO_VERSION" \
    -n "$ISTIO_NS" --create-namespace --wait --timeout 3m ||
    die "helm install istio/base failed"
# Only the control plane: Istio's ztunnel and cni are separate charts, replaced here by ours.
# istiod's default CA_TRUSTED_NODE_ACCOUNTS (istio-system/ztunnel) matches our chart's
# ServiceAccount, so our ztunnel may request certificates for its node's workloads.
helm --kube-context "$CONTEXT" install istiod istio/istiod --version "$ISTIO_VERSION" \
    -n "$ISTIO_NS" --set profile=ambient --wait --timeout 5m ||
    die "helm install istio/istiod failed"

# ------------------------------------------------------------------ 4. our data plane
step "installing charts/cni"
helm --kube-context "$CONTEXT" install ambient-cni "$ROOT/charts/cni" -n "$ISTIO_NS" \
    --set image.hub="$HUB" --set image.tag="$TAG" --set image.pullPolicy=Never \
    --wait --timeout 3m || die "helm install charts/cni failed (agent not ready: see its logs below)"

step "installing charts/ztunnel"
helm --kube-context "$CONTEXT" install ztunnel "$ROOT/charts/ztunnel" -n "$ISTIO_NS" \
    --set image.hub="$HUB" --set image.tag="$TAG" --set image.pullPolicy=Never \
    --wait --timeout 3m || die "helm install charts/ztunnel failed (ztunnel not ready: see its logs below)"

# ------------------------------------------------------------------ 5. workloads
step "deploying sleep and httpbin in namespace $APP_NS (istio.io/dataplane-mode=ambient)"
kc create namespace "$APP_NS"
kc label namespace "$APP_NS" istio.io/dataplane-mode=ambient
# Pod anti-affinity puts the two on different workers: traffic crosses nodes (two ztunnels).
kc -n "$APP_NS" apply -f - <<EOF || die "cannot deploy the test workloads"
apiVersion: v1
kind: ServiceAccount
metadata: {name: httpbin}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sleep}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, labels: {app: httpbin}}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 8000, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin}
spec:
  replicas: 1
  selector: {matchLabels: {app: httpbin}}
  template:
    metadata: {labels: {app: httpbin, e2e: ambient}}
    spec:
      serviceAccountName: httpbin
      containers:
        - name: httpbin
          image: ${HTTPBIN_IMAGE}
          ports: [{containerPort: 8080}]
          readinessProbe: {httpGet: {path: /status/200, port: 8080}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleep}
spec:
  replicas: 1
  selector: {matchLabels: {app: sleep}}
  template:
    metadata: {labels: {app: sleep, e2e: ambient}}
    spec:
      serviceAccountName: sleep
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: {matchLabels: {app: httpbin}}
              topologyKey: kubernetes.io/hostname
      containers:
        - name: sleep
          image: ${CURL_IMAGE}
          command: ["sleep", "infinity"]
EOF
kc -n "$APP_NS" rollout status deploy/httpbin --timeout 3m || die "httpbin did not become ready"
kc -n "$APP_NS" rollout status deploy/sleep --timeout 3m || die "sleep did not become ready"

step "checking that the CNI agent enrolled both pods"
kc -n "$APP_NS" wait pod -l e2e=ambient --timeout 60s \
    --for=jsonpath='{.metadata.annotations.ambient\.istio\.io/redirection}'=enabled ||
    die "pods not annotated ambient.istio.io/redirection=enabled: the agent did not enroll them"

# ------------------------------------------------------------------ 6. assertions
step "sleep -> httpbin must answer 200 through ztunnel"
retry 30 2 expect_http_200 ||
    die "curl http://httpbin.${APP_NS}:8000/get from sleep never returned 200 (last: $(curl_httpbin 2>&1 || true))"

step "ztunnel metrics must show the connection as mutual_tls between the SPIFFE identities"
retry 15 2 has_mtls_metric || {
    ztunnel_metrics | grep '^istio_tcp_connections_opened_total' >&2 || true
    die "no istio_tcp_connections_opened_total sample with connection_security_policy=\"mutual_tls\", source sleep and destination httpbin"
}

step "a deny-all AuthorizationPolicy must make curl fail with exit 56"
kc -n "$APP_NS" apply -f - <<'EOF' || die "cannot apply the AuthorizationPolicy (is istio/base installed?)"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all}
# An ALLOW policy without rules matches nothing: every connection to the namespace is denied.
spec: {}
EOF
LAST_CURL_RC=0
retry 30 2 expect_curl_56 || die "curl never failed with exit 56 under deny-all (last exit code: $LAST_CURL_RC)"

step "removing the policy must restore traffic"
kc -n "$APP_NS" delete authorizationpolicy deny-all
retry 30 2 expect_http_200 || die "traffic did not recover after deleting the deny-all policy"

STEP=""
