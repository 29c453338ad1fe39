package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/wire/auth"
)

// The Kubernetes objects deploy/k8s uses, as far as it uses them. Decoding
// is strict: a field these types do not have (a typo such as
// "readinesProbe", or a field in the wrong place) fails the test, and so
// does a value of the wrong type. They are a subset of k8s.io/api's, which
// this module does not depend on for one test.
type (
	k8sObject struct {
		APIVersion string          `json:"apiVersion"`
		Kind       string          `json:"kind"`
		Metadata   k8sMeta         `json:"metadata"`
		Spec       json.RawMessage `json:"spec"`
	}
	k8sMeta struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	}
	labelSelector struct {
		MatchLabels map[string]string `json:"matchLabels"`
	}
	serviceSpec struct {
		ClusterIP                string            `json:"clusterIP"`
		PublishNotReadyAddresses bool              `json:"publishNotReadyAddresses"`
		Selector                 map[string]string `json:"selector"`
		Ports                    []struct {
			Name       string `json:"name"`
			Port       int    `json:"port"`
			TargetPort any    `json:"targetPort"`
			Protocol   string `json:"protocol"`
		} `json:"ports"`
	}
	statefulSetSpec struct {
		ServiceName         string `json:"serviceName"`
		Replicas            *int   `json:"replicas"`
		PodManagementPolicy string `json:"podManagementPolicy"`
		UpdateStrategy      struct {
			Type string `json:"type"`
		} `json:"updateStrategy"`
		Selector             labelSelector `json:"selector"`
		Template             podTemplate   `json:"template"`
		VolumeClaimTemplates []struct {
			Metadata k8sMeta `json:"metadata"`
			Spec     struct {
				AccessModes      []string `json:"accessModes"`
				StorageClassName *string  `json:"storageClassName"`
				Resources        struct {
					Requests map[string]string `json:"requests"`
				} `json:"resources"`
			} `json:"spec"`
		} `json:"volumeClaimTemplates"`
	}
	deploymentSpec struct {
		Replicas *int `json:"replicas"`
		Strategy struct {
			Type          string `json:"type"`
			RollingUpdate struct {
				MaxUnavailable any `json:"maxUnavailable"`
				MaxSurge       any `json:"maxSurge"`
			} `json:"rollingUpdate"`
		} `json:"strategy"`
		Selector labelSelector `json:"selector"`
		Template podTemplate   `json:"template"`
	}
	podTemplate struct {
		Metadata k8sMeta `json:"metadata"`
		Spec     struct {
			TerminationGracePeriodSeconds *int `json:"terminationGracePeriodSeconds"`
			SecurityContext               struct {
				RunAsNonRoot   *bool  `json:"runAsNonRoot"`
				RunAsUser      *int64 `json:"runAsUser"`
				RunAsGroup     *int64 `json:"runAsGroup"`
				FSGroup        *int64 `json:"fsGroup"`
				SeccompProfile struct {
					Type string `json:"type"`
				} `json:"seccompProfile"`
			} `json:"securityContext"`
			Affinity   json.RawMessage `json:"affinity"`
			Containers []container     `json:"containers"`
			Volumes    []struct {
				Name     string `json:"name"`
				EmptyDir *struct {
					SizeLimit string `json:"sizeLimit"`
				} `json:"emptyDir"`
				Secret *struct {
					SecretName  string `json:"secretName"`
					DefaultMode *int   `json:"defaultMode"`
				} `json:"secret"`
			} `json:"volumes"`
		} `json:"spec"`
	}
	container struct {
		Name            string   `json:"name"`
		Image           string   `json:"image"`
		ImagePullPolicy string   `json:"imagePullPolicy"`
		Args            []string `json:"args"`
		Env             []struct {
			Name      string `json:"name"`
			Value     string `json:"value"`
			ValueFrom *struct {
				FieldRef struct {
					FieldPath string `json:"fieldPath"`
				} `json:"fieldRef"`
			} `json:"valueFrom"`
		} `json:"env"`
		Ports []struct {
			Name          string `json:"name"`
			ContainerPort int    `json:"containerPort"`
			Protocol      string `json:"protocol"`
		} `json:"ports"`
		ReadinessProbe *probe `json:"readinessProbe"`
		LivenessProbe  *probe `json:"livenessProbe"`
		Resources      struct {
			Requests map[string]string `json:"requests"`
			Limits   map[string]string `json:"limits"`
		} `json:"resources"`
		SecurityContext *struct {
			RunAsNonRoot             *bool `json:"runAsNonRoot"`
			AllowPrivilegeEscalation *bool `json:"allowPrivilegeEscalation"`
			ReadOnlyRootFilesystem   *bool `json:"readOnlyRootFilesystem"`
			Capabilities             struct {
				Drop []string `json:"drop"`
			} `json:"capabilities"`
		} `json:"securityContext"`
		VolumeMounts []struct {
			Name      string `json:"name"`
			MountPath string `json:"mountPath"`
			ReadOnly  bool   `json:"readOnly"`
		} `json:"volumeMounts"`
	}
	probe struct {
		HTTPGet struct {
			Path string `json:"path"`
			Port any    `json:"port"`
		} `json:"httpGet"`
		InitialDelaySeconds int `json:"initialDelaySeconds"`
		PeriodSeconds       int `json:"periodSeconds"`
		TimeoutSeconds      int `json:"timeoutSeconds"`
		FailureThreshold    int `json:"failureThreshold"`
	}
	pdbSpec struct {
		MaxUnavailable any           `json:"maxUnavailable"`
		Selector       labelSelector `json:"selector"`
	}
	hpaSpec struct {
		ScaleTargetRef struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		MinReplicas int `json:"minReplicas"`
		MaxReplicas int `json:"maxReplicas"`
		Metrics     []struct {
			Type     string `json:"type"`
			Resource struct {
				Name   string `json:"name"`
				Target struct {
					Type               string `json:"type"`
					AverageUtilization int    `json:"averageUtilization"`
				} `json:"target"`
			} `json:"resource"`
		} `json:"metrics"`
		Behavior struct {
			ScaleDown struct {
				StabilizationWindowSeconds int `json:"stabilizationWindowSeconds"`
				Policies                   []struct {
					Type          string `json:"type"`
					Value         int    `json:"value"`
					PeriodSeconds int    `json:"periodSeconds"`
				} `json:"policies"`
			} `json:"scaleDown"`
		} `json:"behavior"`
	}
	// k8sSecret is a Secret: no spec, its files in data or stringData.
	k8sSecret struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   k8sMeta           `json:"metadata"`
		Type       string            `json:"type"`
		Data       map[string]string `json:"data"`
		StringData map[string]string `json:"stringData"`
	}
	netpolSpec struct {
		PodSelector labelSelector `json:"podSelector"`
		PolicyTypes []string      `json:"policyTypes"`
		Ingress     []struct {
			From []struct {
				PodSelector *labelSelector `json:"podSelector"`
			} `json:"from"`
			Ports []struct {
				Port     int    `json:"port"`
				Protocol string `json:"protocol"`
			} `json:"ports"`
		} `json:"ingress"`
	}
)

// strict decodes JSON into v, refusing unknown fields.
func strict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// k8sManifests returns deploy/k8s as kustomize builds it ("kubectl
// kustomize", offline) or, without kubectl, the files kustomization.yaml
// lists, as YAML documents.
func k8sManifests(t *testing.T) (docs [][]byte, built bool) {
	t.Helper()
	dir := filepath.Join(deployDir(), "k8s")
	var stream []byte
	if kubectl, err := exec.LookPath("kubectl"); err == nil {
		out, err := exec.Command(kubectl, "kustomize", dir).Output()
		if err != nil {
			t.Fatalf("kubectl kustomize %s: %v", dir, err)
		}
		stream, built = out, true
	} else {
		t.Log("kubectl is not installed: checking the files kustomization.yaml lists, without kustomize")
		b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var k struct{ Resources []string }
		if err := yaml.Unmarshal(b, &k); err != nil {
			t.Fatal(err)
		}
		for _, r := range k.Resources {
			b, err := os.ReadFile(filepath.Join(dir, r))
			if err != nil {
				t.Fatal(err)
			}
			stream = append(append(stream, b...), "\n---\n"...)
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(stream))
	for {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if v == nil {
			continue
		}
		j, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, j)
	}
	return docs, built
}

// TestK8sManifests validates deploy/k8s offline: every object decodes
// strictly into the fields Kubernetes has; workloads have probes on
// /readyz and /healthz, requests and limits, a non-root read-only
// security context and a stop grace above drain plus shutdown; selectors,
// Services, the PodDisruptionBudget, the HPA and the NetworkPolicies name
// ports and pods that exist; container ports are the ports the TOKEND_*
// flags listen on; every TOKEND_* variable is a flag of its mode and every
// $(VAR) is defined before use; the StatefulSet's initial cluster and
// advertised URLs are its pods' stable names under its headless Service.
func TestK8sManifests(t *testing.T) {
	docs, built := k8sManifests(t)
	var (
		objs     []k8sObject
		services = map[string]serviceSpec{}
		sets     = map[string]statefulSetSpec{}
		deploys  = map[string]deploymentSpec{}
		pdbs     = map[string]pdbSpec{}
		hpas     = map[string]hpaSpec{}
		netpols  = map[string]netpolSpec{}
	)
	for _, d := range docs {
		var o k8sObject
		if err := strict(d, &o); err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		objs = append(objs, o)
		id := o.Kind + "/" + o.Metadata.Name
		var err error
		switch o.APIVersion + " " + o.Kind {
		case "v1 Namespace":
			if o.Spec != nil {
				t.Errorf("%s has a spec", id)
			}
		case "v1 Service":
			var s serviceSpec
			err = strict(o.Spec, &s)
			services[o.Metadata.Name] = s
		case "apps/v1 StatefulSet":
			var s statefulSetSpec
			err = strict(o.Spec, &s)
			sets[o.Metadata.Name] = s
		case "apps/v1 Deployment":
			var s deploymentSpec
			err = strict(o.Spec, &s)
			deploys[o.Metadata.Name] = s
		case "policy/v1 PodDisruptionBudget":
			var s pdbSpec
			err = strict(o.Spec, &s)
			pdbs[o.Metadata.Name] = s
		case "autoscaling/v2 HorizontalPodAutoscaler":
			var s hpaSpec
			err = strict(o.Spec, &s)
			hpas[o.Metadata.Name] = s
		case "networking.k8s.io/v1 NetworkPolicy":
			var s netpolSpec
			err = strict(o.Spec, &s)
			netpols[o.Metadata.Name] = s
		default:
			t.Errorf("%s: unexpected %s %s", id, o.APIVersion, o.Kind)
		}
		if err != nil {
			t.Errorf("%s: %v", id, err)
		}
		if o.Metadata.Labels["app.kubernetes.io/name"] != "tokend" {
			t.Errorf("%s: no label app.kubernetes.io/name=tokend", id)
		}
		if built && o.Kind != "Namespace" && o.Metadata.Namespace != "tokend" {
			t.Errorf("%s: namespace %q after kustomize, want tokend", id, o.Metadata.Namespace)
		}
	}
	if len(sets) != 1 || len(deploys) != 1 || len(pdbs) != 2 || len(hpas) != 1 || len(services) != 2 || len(netpols) != 2 {
		t.Fatalf("want 1 StatefulSet, 1 Deployment, 2 PDBs, 1 HPA, 2 Services, 2 NetworkPolicies; got %d, %d, %d, %d, %d, %d",
			len(sets), len(deploys), len(pdbs), len(hpas), len(services), len(netpols))
	}

	// The pods, by workload.
	type workload struct {
		kind, name, mode string
		selector         map[string]string
		tmpl             podTemplate
	}
	var wls []workload
	for name, s := range sets {
		wls = append(wls, workload{"StatefulSet", name, "server", s.Selector.MatchLabels, s.Template})
	}
	for name, d := range deploys {
		wls = append(wls, workload{"Deployment", name, "worker", d.Selector.MatchLabels, d.Template})
	}
	matches := func(sel, labels map[string]string) bool {
		if len(sel) == 0 {
			return false
		}
		for k, v := range sel {
			if labels[k] != v {
				return false
			}
		}
		return true
	}
	selected := func(sel map[string]string) []workload {
		var out []workload
		for _, w := range wls {
			if matches(sel, w.tmpl.Metadata.Labels) {
				out = append(out, w)
			}
		}
		return out
	}
	type portKey struct {
		name, proto string
		num         int
	}
	portsOf := func(w workload) []portKey {
		var out []portKey
		for _, c := range w.tmpl.Spec.Containers {
			for _, p := range c.Ports {
				proto := p.Protocol
				if proto == "" {
					proto = "TCP"
				}
				out = append(out, portKey{p.Name, proto, p.ContainerPort})
			}
		}
		return out
	}
	hasPort := func(w workload, ref any, proto string) bool {
		for _, p := range portsOf(w) {
			if p.proto != proto {
				continue
			}
			switch r := ref.(type) {
			case string:
				if p.name == r {
					return true
				}
			case float64:
				if p.num == int(r) {
					return true
				}
			}
		}
		return false
	}

	for _, w := range wls {
		id := w.kind + "/" + w.name
		if !matches(w.selector, w.tmpl.Metadata.Labels) {
			t.Errorf("%s: selector %v does not select its own pods %v", id, w.selector, w.tmpl.Metadata.Labels)
		}
		ps := w.tmpl.Spec
		if g := ps.TerminationGracePeriodSeconds; g == nil || *g <= 20 {
			t.Errorf("%s: terminationGracePeriodSeconds %v, want above --drain-timeout + --shutdown-timeout (20 s)", id, g)
		}
		if sc := ps.SecurityContext; sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 10001 || sc.SeccompProfile.Type != "RuntimeDefault" {
			t.Errorf("%s: pod securityContext %+v, want runAsNonRoot, runAsUser 10001 (the image's), seccomp RuntimeDefault", id, sc)
		}
		if len(ps.Containers) != 1 {
			t.Fatalf("%s: %d containers, want 1", id, len(ps.Containers))
		}
		c := ps.Containers[0]
		if c.Image != "tokend" && !strings.HasPrefix(c.Image, "tokend:") {
			t.Errorf("%s: image %q", id, c.Image)
		}
		if built && c.Image != "tokend:"+cluster.Version {
			t.Errorf("%s: image %q after kustomize, want tokend:%s (kustomization.yaml's newTag follows cluster.Version)", id, c.Image, cluster.Version)
		}
		if len(c.Args) == 0 || c.Args[0] != w.mode {
			t.Errorf("%s: args %q, want tokend %s", id, c.Args, w.mode)
		}
		for _, pr := range []struct {
			what string
			p    *probe
			path string
		}{{"readinessProbe", c.ReadinessProbe, "/readyz"}, {"livenessProbe", c.LivenessProbe, "/healthz"}} {
			if pr.p == nil || pr.p.HTTPGet.Path != pr.path || !hasPort(w, pr.p.HTTPGet.Port, "TCP") || pr.p.PeriodSeconds == 0 {
				t.Errorf("%s: %s %+v, want httpGet %s on the http port", id, pr.what, pr.p, pr.path)
			}
		}
		for _, r := range []string{"cpu", "memory"} {
			if c.Resources.Requests[r] == "" || c.Resources.Limits[r] == "" {
				t.Errorf("%s: resources %+v: want requests and limits for %s", id, c.Resources, r)
			}
		}
		if sc := c.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) {
			t.Errorf("%s: container securityContext %+v, want runAsNonRoot, readOnlyRootFilesystem, no privilege escalation, drop ALL", id, sc)
		}
		mounts := map[string]string{}
		for _, m := range c.VolumeMounts {
			mounts[m.MountPath] = m.Name
		}
		if mounts["/tmp"] == "" {
			t.Errorf("%s: no volume on /tmp: the root file system is read-only and tokenctl acquire records holders in /tmp", id)
		}
		volumes := map[string]bool{}
		for _, v := range ps.Volumes {
			volumes[v.Name] = true
		}
		if w.kind == "StatefulSet" {
			for _, vct := range sets[w.name].VolumeClaimTemplates {
				volumes[vct.Metadata.Name] = true
			}
		}
		for path, name := range mounts {
			if !volumes[name] {
				t.Errorf("%s: volume %q mounted on %s is not defined", id, name, path)
			}
		}

		// Environment: every TOKEND_* is a flag of the mode; $(VAR) only
		// after VAR (Kubernetes expands earlier variables only).
		flags := flagDefaults(t, w.mode)
		env := map[string]string{}
		fieldRefs := map[string]string{}
		refRE := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
		for _, e := range c.Env {
			if strings.HasPrefix(e.Name, "TOKEND_") {
				if _, ok := flags[envToFlag(e.Name)]; !ok {
					t.Errorf("%s: %s is not a flag of tokend %s", id, e.Name, w.mode)
				}
			}
			for _, m := range refRE.FindAllStringSubmatch(e.Value, -1) {
				if _, ok := env[m[1]]; !ok {
					t.Errorf("%s: %s uses $(%s) before it is defined: Kubernetes would pass it literally", id, e.Name, m[1])
				}
			}
			if e.ValueFrom != nil {
				fieldRefs[e.Name] = e.ValueFrom.FieldRef.FieldPath
			}
			env[e.Name] = e.Value
		}
		for _, a := range c.Args {
			for _, m := range refRE.FindAllStringSubmatch(a, -1) {
				if _, ok := env[m[1]]; !ok {
					t.Errorf("%s: argument %q uses $(%s), which is not in env", id, a, m[1])
				}
			}
		}

		// etcd over TLS: the mode's Secret (secrets.yaml) read-only at
		// TOKEND_CERTS_DIR, readable by the pod's group only, and no
		// http:// URL anywhere.
		wantSecret := k8sSecretNames[w.mode]
		var secretMount bool
		for _, m := range c.VolumeMounts {
			secretMount = secretMount || m.MountPath == "/etc/tokend/pki" && m.ReadOnly
		}
		var sec, mode string
		for _, v := range ps.Volumes {
			if v.Name == mounts["/etc/tokend/pki"] && v.Secret != nil {
				sec = v.Secret.SecretName
				if v.Secret.DefaultMode != nil {
					mode = fmt.Sprintf("%#o", *v.Secret.DefaultMode)
				}
			}
		}
		if env["TOKEND_CERTS_DIR"] != "/etc/tokend/pki" || !secretMount || sec != wantSecret {
			t.Errorf("%s: TOKEND_CERTS_DIR %q, Secret %q on /etc/tokend/pki (read-only %v): want the Secret %s read-only at TOKEND_CERTS_DIR=/etc/tokend/pki",
				id, env["TOKEND_CERTS_DIR"], sec, secretMount, wantSecret)
		}
		if fg := ps.SecurityContext.FSGroup; mode != "0440" || fg == nil || *fg != 10001 {
			t.Errorf("%s: Secret defaultMode %s, fsGroup %v: want 0440 and fsGroup 10001 (the keys readable by the image's group only)", id, mode, fg)
		}
		keyFileModeAccepted(t, id, mode)
		// Client authentication stays on; a server's tokenctl acquire
		// finds the workers through their Service.
		if _, ok := env["TOKEND_INSECURE"]; ok || slices.Contains(c.Args, "--insecure") {
			t.Errorf("%s: --insecure turns client authentication off", id)
		}
		if w.mode == "server" && env["TOKENCTL_SEEDS"] != "tokend-worker.$(POD_NAMESPACE).svc:7700" {
			t.Errorf("%s: TOKENCTL_SEEDS %q, want tokend-worker.$(POD_NAMESPACE).svc:7700 (kubectl exec server-0 -- tokenctl acquire)", id, env["TOKENCTL_SEEDS"])
		}
		for _, v := range append(slices.Clone(c.Args), slices.Collect(maps.Values(env))...) {
			if strings.Contains(v, "http://") {
				t.Errorf("%s: %q: etcd is reached over TLS, https:// only", id, v)
			}
		}

		// Ports: each listener's port is a named container port.
		listenPort := func(flag, value string) int {
			host := value
			if strings.Contains(value, "://") {
				u, err := url.Parse(value)
				if err != nil {
					t.Errorf("%s: %s %q: %v", id, flag, value, err)
					return 0
				}
				host = u.Host
			}
			_, p, err := net.SplitHostPort(host)
			n, err2 := strconv.Atoi(p)
			if err != nil || err2 != nil {
				t.Errorf("%s: %s %q has no port", id, flag, value)
			}
			return n
		}
		wantPorts := map[string]portKey{"TOKEND_HTTP_ADDR": {"http", "TCP", 0}}
		if w.mode == "server" {
			wantPorts["TOKEND_PEER_URLS"] = portKey{"etcd-peer", "TCP", 0}
			wantPorts["TOKEND_CLIENT_URLS"] = portKey{"etcd-client", "TCP", 0}
		} else {
			wantPorts["TOKEND_UDP_ADDR"] = portKey{"token", "UDP", 0}
			wantPorts["TOKEND_HANDOFF_ADDR"] = portKey{"handoff", "TCP", 0}
		}
		for v, pk := range wantPorts {
			pk.num = listenPort(v, env[v])
			if !slices.Contains(portsOf(w), pk) {
				t.Errorf("%s: %s=%s listens on %d/%s, but the container has no port %q with that number: %v", id, v, env[v], pk.num, pk.proto, pk.name, portsOf(w))
			}
			if adv, ok := env[strings.Replace(v, "TOKEND_", "TOKEND_ADVERTISE_", 1)]; ok && listenPort("advertise "+v, adv) != pk.num {
				t.Errorf("%s: the advertised port of %s differs from the one it listens on", id, v)
			}
		}

		switch w.mode {
		case "worker":
			if fieldRefs["POD_IP"] != "status.podIP" || env["TOKEND_ADVERTISE_UDP_ADDR"] != "$(POD_IP):"+strconv.Itoa(listenPort("udp", env["TOKEND_UDP_ADDR"])) {
				t.Errorf("%s: TOKEND_ADVERTISE_UDP_ADDR %q, POD_IP from %q: want $(POD_IP):<udp port> from status.podIP", id, env["TOKEND_ADVERTISE_UDP_ADDR"], fieldRefs["POD_IP"])
			}
		case "server":
			s := sets[w.name]
			hs, ok := services[s.ServiceName]
			if !ok || hs.ClusterIP != "None" || !hs.PublishNotReadyAddresses || !matches(hs.Selector, w.tmpl.Metadata.Labels) {
				t.Errorf("%s: serviceName %q: want a headless Service selecting the servers that publishes not-ready addresses (the members must find each other before any is ready): %+v", id, s.ServiceName, hs)
			}
			if s.Replicas == nil || *s.Replicas != 3 {
				t.Errorf("%s: replicas %v, want 3", id, s.Replicas)
			}
			if fieldRefs["POD_NAME"] != "metadata.name" || fieldRefs["POD_NAMESPACE"] != "metadata.namespace" {
				t.Errorf("%s: POD_NAME and POD_NAMESPACE must come from the downward API: %v", id, fieldRefs)
			}
			peer := listenPort("peer", env["TOKEND_PEER_URLS"])
			client := listenPort("client", env["TOKEND_CLIENT_URLS"])
			host := func(pod string) string { return pod + "." + s.ServiceName + ".$(POD_NAMESPACE).svc" }
			var members, endpoints []string
			for i := range 3 {
				pod := fmt.Sprintf("%s-%d", w.name, i)
				members = append(members, fmt.Sprintf("%s=https://%s:%d", pod, host(pod), peer))
				endpoints = append(endpoints, fmt.Sprintf("%s:%d", host(pod), client))
			}
			if got := env["TOKEND_INITIAL_CLUSTER"]; got != strings.Join(members, ",") {
				t.Errorf("%s: TOKEND_INITIAL_CLUSTER\n%s\nwant the pods' stable names\n%s", id, got, strings.Join(members, ","))
			}
			for _, want := range []string{"--name=$(POD_NAME)", fmt.Sprintf("--advertise-peer-urls=https://%s:%d", host("$(POD_NAME)"), peer),
				fmt.Sprintf("--advertise-client-urls=https://%s:%d", host("$(POD_NAME)"), client)} {
				if !slices.Contains(c.Args, want) {
					t.Errorf("%s: args %q lack %s", id, c.Args, want)
				}
			}
			if mounts["/var/lib/tokend"] == "" || env["TOKEND_DATA_DIR"] != "/var/lib/tokend" || len(s.VolumeClaimTemplates) != 1 || s.VolumeClaimTemplates[0].Metadata.Name != mounts["/var/lib/tokend"] {
				t.Errorf("%s: etcd's data dir must be the volumeClaimTemplate's volume on /var/lib/tokend", id)
			}
			// The workers find etcd at the same names.
			for _, d := range deploys {
				for _, e := range d.Template.Spec.Containers[0].Env {
					if e.Name == "TOKEND_ETCD_ENDPOINTS" && e.Value != strings.Join(endpoints, ",") {
						t.Errorf("worker TOKEND_ETCD_ENDPOINTS %s, want %s", e.Value, strings.Join(endpoints, ","))
					}
				}
			}
		}
	}

	// Services, PDBs, the HPA and the NetworkPolicies point at what exists.
	for name, s := range services {
		sel := selected(s.Selector)
		if len(sel) != 1 {
			t.Errorf("Service/%s selects %d workloads, want 1", name, len(sel))
			continue
		}
		for _, p := range s.Ports {
			proto := p.Protocol
			if proto == "" {
				proto = "TCP"
			}
			if !hasPort(sel[0], p.TargetPort, proto) {
				t.Errorf("Service/%s port %s: targetPort %v/%s is not a port of %s", name, p.Name, p.TargetPort, proto, sel[0].name)
			}
		}
	}
	for name, p := range pdbs {
		if len(selected(p.Selector.MatchLabels)) != 1 || p.MaxUnavailable != float64(1) {
			t.Errorf("PodDisruptionBudget/%s: maxUnavailable %v, selects %d workloads; want 1 and 1", name, p.MaxUnavailable, len(selected(p.Selector.MatchLabels)))
		}
	}
	for _, w := range wls {
		if w.mode == "server" && !slices.ContainsFunc(slices.Collect(maps.Values(pdbs)), func(p pdbSpec) bool { return matches(p.Selector.MatchLabels, w.tmpl.Metadata.Labels) }) {
			t.Errorf("no PodDisruptionBudget covers the servers")
		}
	}
	for name, h := range hpas {
		if _, ok := deploys[h.ScaleTargetRef.Name]; !ok || h.ScaleTargetRef.Kind != "Deployment" || h.MinReplicas < 1 || h.MaxReplicas < h.MinReplicas {
			t.Errorf("HorizontalPodAutoscaler/%s: %+v does not scale the worker Deployment", name, h.ScaleTargetRef)
		}
	}
	for name, np := range netpols {
		sel := selected(np.PodSelector.MatchLabels)
		if len(sel) != 1 {
			t.Errorf("NetworkPolicy/%s selects %d workloads, want 1", name, len(sel))
			continue
		}
		for _, in := range np.Ingress {
			for _, p := range in.Ports {
				if !hasPort(sel[0], float64(p.Port), p.Protocol) {
					t.Errorf("NetworkPolicy/%s allows %d/%s, which %s does not listen on", name, p.Port, p.Protocol, sel[0].name)
				}
			}
			for _, f := range in.From {
				if f.PodSelector != nil && len(selected(f.PodSelector.MatchLabels)) == 0 {
					t.Errorf("NetworkPolicy/%s allows from %v, which selects no pod", name, f.PodSelector.MatchLabels)
				}
			}
		}
	}
	t.Logf("%d objects checked (kustomize: %v)", len(objs), built)
}

// k8sSecretNames are the Secrets the pods mount at /etc/tokend/pki, by mode.
var k8sSecretNames = map[string]string{"server": "tokend-etcd-server", "worker": "tokend-etcd-worker"}

// k8sClientSecret is the Secret client pods mount: client.key.
const k8sClientSecret = "tokend-client"

// TestK8sSecrets checks deploy/k8s/secrets.yaml, the placeholder Secrets
// the pods mount: each holds exactly the files "tokend certs" makes for
// its mode (never ca.key or root.key; cluster.key for servers and
// workers, client.key for servers and in a Secret of its own for
// clients), every placeholder is named in the documented "kubectl create
// secret generic" command, the client pod's mount is documented with
// TOKEND_KEY_FILE, and the file is not in kustomization.yaml (applying it
// again would put the placeholders back over the real files).
func TestK8sSecrets(t *testing.T) {
	dir := filepath.Join(deployDir(), "k8s")
	b, err := os.ReadFile(filepath.Join(dir, "secrets.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// Servers: etcd's files, the cluster key and the client key they
	// register; workers: etcd's files and the cluster key; clients: the
	// client key only.
	want := map[string][]string{
		"tokend-etcd-server": {"ca.crt", "client.key", "cluster.key", "server-server-0.crt", "server-server-0.key", "server-server-1.crt", "server-server-1.key",
			"server-server-2.crt", "server-server-2.key", "tokend.crt", "tokend.key"},
		"tokend-etcd-worker": {"ca.crt", "cluster.key", "tokend.crt", "tokend.key"},
		k8sClientSecret:      {"client.key"},
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	seen := map[string]bool{}
	for {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		j, _ := json.Marshal(v)
		var s k8sSecret
		if err := strict(j, &s); err != nil {
			t.Fatalf("secrets.yaml: %v", err)
		}
		name := s.Metadata.Name
		seen[name] = true
		keys := slices.Sorted(maps.Keys(s.StringData))
		if s.APIVersion != "v1" || s.Kind != "Secret" || s.Type != "Opaque" || s.Metadata.Namespace != "tokend" || s.Metadata.Labels["app.kubernetes.io/name"] != "tokend" {
			t.Errorf("secrets.yaml %s: %s %s type %q in %q: want a v1 Opaque Secret in tokend, labelled", name, s.APIVersion, s.Kind, s.Type, s.Metadata.Namespace)
		}
		if !slices.Equal(keys, want[name]) || len(s.Data) > 0 {
			t.Errorf("secrets.yaml %s: files %q, want %q", name, keys, want[name])
		}
		// The documented command makes the same Secret.
		cmd := regexp.MustCompile(`create secret generic ` + regexp.QuoteMeta(name) + `((?:[^\n\\]|\\\n#)*)`).FindStringSubmatch(string(b))
		if cmd == nil {
			t.Errorf("secrets.yaml: no \"kubectl create secret generic %s\" command", name)
			continue
		}
		var files []string
		for _, m := range regexp.MustCompile(`--from-file=certs/(\S+)`).FindAllStringSubmatch(cmd[1], -1) {
			files = append(files, m[1])
		}
		if slices.Sort(files); !slices.Equal(files, want[name]) {
			t.Errorf("secrets.yaml: the command for %s takes %q, want %q", name, files, want[name])
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("secrets.yaml has no Secret %s", name)
		}
	}
	for mode, name := range k8sSecretNames {
		if _, ok := want[name]; !ok {
			t.Errorf("the %s pods mount %s, which secrets.yaml does not define", mode, name)
		}
	}
	mount := regexp.MustCompile(`secretName: ` + k8sClientSecret + `, defaultMode: 0440\}[\s\S]*TOKEND_KEY_FILE, value: (/\S+)/client.key\}[\s\S]*mountPath: (/\S+),`).FindStringSubmatch(string(b))
	if mount == nil || mount[1] != mount[2] {
		t.Errorf("secrets.yaml: no client pod example mounting %s (mode 0440) where TOKEND_KEY_FILE points: %q", k8sClientSecret, mount)
	}
	k, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var kz struct{ Resources []string }
	if err := yaml.Unmarshal(k, &kz); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(kz.Resources, "secrets.yaml") {
		t.Errorf("kustomization.yaml lists secrets.yaml: kubectl apply -k would overwrite the real certificates with placeholders")
	}
}

// keyFileModeAccepted checks that tokend reads a key file with the mode a
// Secret volume gives it (defaultMode, owner root, group the pod's
// fsGroup): a mode it refuses would stop every pod at start.
func keyFileModeAccepted(t *testing.T, id, mode string) {
	t.Helper()
	m, err := strconv.ParseUint(mode, 0, 32)
	if err != nil {
		t.Errorf("%s: Secret defaultMode %q: %v", id, mode, err)
		return
	}
	k, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), pki.ClusterKeyFile)
	if err := pki.WriteKeyFile(path, pki.ClusterKeyName, k); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, os.FileMode(m)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pki.ReadKeyFile(path); err != nil {
		t.Errorf("%s: a key file mounted with the Secret's defaultMode %s is refused: %v", id, mode, err)
	}
}
