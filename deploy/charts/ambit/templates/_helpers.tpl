{{/* What a release's names end with: "-REVISION" for a revision (a
canary beside the stable release), else nothing. */}}
{{- define "ambit.rev" -}}
{{- if .Values.revision -}}-{{ .Values.revision }}{{- end -}}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "ambit.labels" -}}
app.kubernetes.io/part-of: ambit
app.kubernetes.io/instance: {{ .Release.Name }}
{{- with .Values.revision }}
ambit.dev/rev: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The image of component `.component`. */}}
{{- define "ambit.image" -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{ printf "%s/ambit-%s:%s" .root.Values.image.registry .component $tag }}
{{- end }}

{{/* The node's CNI configuration directory. */}}
{{- define "ambit.cniConfDir" -}}
{{- if .Values.cni.confDir -}}{{ .Values.cni.confDir }}
{{- else if eq .Values.platform "k3s" -}}/var/lib/rancher/k3s/agent/etc/cni/net.d
{{- else if eq .Values.platform "openshift" -}}/etc/kubernetes/cni/net.d
{{- else -}}/etc/cni/net.d
{{- end -}}
{{- end }}

{{/* The node's CNI bin directory. */}}
{{- define "ambit.cniBinDir" -}}
{{- if .Values.cni.binDir -}}{{ .Values.cni.binDir }}
{{- else if eq .Values.platform "gke" -}}/home/kubernetes/bin
{{- else if eq .Values.platform "k3s" -}}/var/lib/rancher/k3s/data/cni
{{- else if eq .Values.platform "openshift" -}}/var/lib/cni/bin
{{- else -}}/opt/cni/bin
{{- end -}}
{{- end }}

{{/* The flags that give a proxy its identity from the CA. */}}
{{- define "ambit.caArgs" -}}
- --ca-addr=ambit-ca{{ include "ambit.rev" . }}.{{ .Release.Namespace }}.svc:15012
- --ca-namespace={{ .Release.Namespace }}
- --ca-root=/var/run/ambit-ca/root-cert.pem
- --ca-token-file=/var/run/secrets/ambit-ca/token
- --trust-domain={{ .Values.trustDomain }}
{{- end }}

{{/* Where an L7 proxy sends its spans, when tracing is on. */}}
{{- define "ambit.tracingArgs" -}}
{{- with .Values.tracing.otlpEndpoint }}
- --otlp-endpoint={{ . }}
- --trace-sampling={{ $.Values.tracing.sampling }}
{{- end }}
{{- end }}

{{/* The CA's root and a token for it, as volumes. */}}
{{- define "ambit.caVolumes" -}}
# The root certificate the CA publishes (never its key).
- name: ca-root
  configMap:
    name: ambit-ca-root-cert
# A token for the CA only (audience ambit-ca), bound to this pod.
- name: ca-token
  projected:
    sources:
      - serviceAccountToken:
          audience: ambit-ca
          expirationSeconds: 3600
          path: token
{{- end }}

{{- define "ambit.caVolumeMounts" -}}
- name: ca-root
  mountPath: /var/run/ambit-ca
  readOnly: true
- name: ca-token
  mountPath: /var/run/secrets/ambit-ca
  readOnly: true
{{- end }}

{{/* Prometheus' scrape annotations, for Istio's metrics port. */}}
{{- define "ambit.scrape" -}}
prometheus.io/scrape: "true"
prometheus.io/port: "15020"
prometheus.io/path: /metrics
{{- end }}

{{/* A container's environment: the pod's namespace and the log level. */}}
{{- define "ambit.env" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{/* A non-root container that changes nothing of its own. */}}
{{- define "ambit.restricted" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
