package stack

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// CRI's NamespaceMode values.
const (
	nsPod  = 0
	nsNode = 2
)

// RunDaemonSetPod runs one pod of ds the way a kubelet would ask CRI for it,
// with the CRI configs derived from the decoded DaemonSet, so the manifest a
// user applies is the one tested. configMaps holds the ConfigMaps its volumes
// name. What this stack cannot give (no CNI) it states: the pod gets the
// node's network namespace; everything else (host PID, volumes, mounts,
// capabilities, seccomp, read-only root, no_new_privs, user, image, args)
// comes from the manifest, and anything it uses that is not translated here
// is an error rather than silently dropped.
func (s *Stack) RunDaemonSetPod(ctx context.Context, ds *appsv1.DaemonSet, configMaps map[string]*corev1.ConfigMap) (*RunningPod, []string, error) {
	spec := ds.Spec.Template.Spec
	if len(spec.InitContainers) > 0 || spec.HostIPC || spec.SecurityContext != nil && spec.SecurityContext.RunAsUser != nil {
		return nil, nil, fmt.Errorf("DaemonSet %s uses pod fields this stack does not translate", ds.Name)
	}
	uid := fmt.Sprintf("%s-%d", ds.Name, time.Now().UnixNano())
	dir := filepath.Join(s.Dir, "pods", uid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	pidMode := nsPod
	if spec.HostPID {
		pidMode = nsNode
	}
	podName := ds.Name + "-" + uid[len(uid)-5:]
	sandbox := map[string]any{
		"metadata":      map[string]any{"name": podName, "namespace": ds.Namespace, "uid": uid, "attempt": 0},
		"labels":        ds.Spec.Template.Labels,
		"annotations":   ds.Spec.Template.Annotations,
		"log_directory": dir,
		"linux": map[string]any{
			"cgroup_parent": s.CgroupParent + "/pod-" + uid,
			"security_context": map[string]any{
				// NODE network: this stack has no CNI (the DaemonSet itself
				// needs no host network).
				"namespace_options": map[string]any{"network": nsNode, "pid": pidMode},
			},
		},
	}
	sandboxPath := filepath.Join(dir, "pod.json")
	if err := writeJSON(sandboxPath, sandbox); err != nil {
		return nil, nil, err
	}

	// Volumes as the kubelet prepares them: host paths as they are (in the
	// node's mount namespace), ConfigMaps as files.
	volumes := map[string]string{}
	for _, v := range spec.Volumes {
		switch {
		case v.HostPath != nil:
			if v.HostPath.Type != nil && *v.HostPath.Type == corev1.HostPathDirectoryOrCreate {
				if _, err := s.InNamespace(ctx, "/bin/mkdir", "-p", v.HostPath.Path); err != nil {
					return nil, nil, err
				}
			}
			volumes[v.Name] = v.HostPath.Path
		case v.ConfigMap != nil:
			cm := configMaps[v.ConfigMap.Name]
			if cm == nil {
				return nil, nil, fmt.Errorf("volume %s: ConfigMap %s not given", v.Name, v.ConfigMap.Name)
			}
			vdir := filepath.Join(dir, "volumes", v.Name)
			if err := os.MkdirAll(vdir, 0o755); err != nil {
				return nil, nil, err
			}
			for k, data := range cm.Data {
				if err := os.WriteFile(filepath.Join(vdir, k), []byte(data), 0o644); err != nil {
					return nil, nil, err
				}
			}
			volumes[v.Name] = vdir
		default:
			return nil, nil, fmt.Errorf("volume %s: only hostPath and configMap volumes are translated", v.Name)
		}
	}

	out, err := s.Crictl(ctx, "runp", sandboxPath)
	if err != nil {
		return nil, nil, fmt.Errorf("run pod %s/%s: %w", ds.Namespace, podName, err)
	}
	pod := &RunningPod{ID: strings.TrimSpace(out), Name: podName, Namespace: ds.Namespace, UID: uid, config: sandboxPath}

	var ids []string
	for _, c := range spec.Containers {
		cfg, err := containerConfig(c, volumes)
		if err != nil {
			return pod, ids, err
		}
		path := filepath.Join(dir, "container-"+c.Name+".json")
		if err := writeJSON(path, cfg); err != nil {
			return pod, ids, err
		}
		out, err := s.Crictl(ctx, "create", pod.ID, path, sandboxPath)
		if err != nil {
			return pod, ids, fmt.Errorf("create container %s: %w", c.Name, err)
		}
		id := strings.TrimSpace(out)
		ids = append(ids, id)
		if err := s.StartContainer(ctx, id); err != nil {
			return pod, ids, fmt.Errorf("start container %s: %w", c.Name, err)
		}
	}
	return pod, ids, nil
}

// containerConfig is the CRI ContainerConfig of c.
func containerConfig(c corev1.Container, volumes map[string]string) (map[string]any, error) {
	if len(c.EnvFrom) > 0 || c.WorkingDir != "" {
		return nil, fmt.Errorf("container %s: envFrom and workingDir are not translated", c.Name)
	}
	// Env as the kubelet resolves it: literal values, and the node's name
	// for a spec.nodeName field reference (this stack's node is the host).
	var envs []map[string]any
	for _, e := range c.Env {
		value := e.Value
		if f := e.ValueFrom; f != nil {
			if f.FieldRef == nil || f.FieldRef.FieldPath != "spec.nodeName" {
				return nil, fmt.Errorf("container %s: env %s: only values and fieldRef spec.nodeName are translated", c.Name, e.Name)
			}
			host, err := os.Hostname()
			if err != nil {
				return nil, err
			}
			value = host
		}
		envs = append(envs, map[string]any{"key": e.Name, "value": value})
	}
	var mounts []map[string]any
	for _, m := range c.VolumeMounts {
		host, ok := volumes[m.Name]
		if !ok {
			return nil, fmt.Errorf("container %s: mount of unknown volume %s", c.Name, m.Name)
		}
		if m.SubPath != "" {
			return nil, fmt.Errorf("container %s: subPath is not translated", c.Name)
		}
		mounts = append(mounts, map[string]any{"container_path": m.MountPath, "host_path": host, "readonly": m.ReadOnly})
	}
	sc := map[string]any{}
	if k := c.SecurityContext; k != nil {
		if k.Privileged != nil {
			sc["privileged"] = *k.Privileged
		}
		if k.Capabilities != nil {
			caps := func(l []corev1.Capability) []string {
				out := make([]string, len(l))
				for i, c := range l {
					out[i] = string(c)
				}
				return out
			}
			sc["capabilities"] = map[string]any{"add_capabilities": caps(k.Capabilities.Add), "drop_capabilities": caps(k.Capabilities.Drop)}
		}
		if k.ReadOnlyRootFilesystem != nil {
			sc["readonly_rootfs"] = *k.ReadOnlyRootFilesystem
		}
		if k.AllowPrivilegeEscalation != nil {
			sc["no_new_privs"] = !*k.AllowPrivilegeEscalation
		}
		if k.RunAsUser != nil {
			sc["run_as_user"] = map[string]any{"value": *k.RunAsUser}
		}
		if p := k.SeccompProfile; p != nil {
			switch p.Type {
			case corev1.SeccompProfileTypeRuntimeDefault:
				sc["seccomp"] = map[string]any{"profile_type": 0} // RuntimeDefault
			default:
				return nil, fmt.Errorf("container %s: seccomp profile %s is not translated", c.Name, p.Type)
			}
		}
	}
	return map[string]any{
		"metadata": map[string]any{"name": c.Name, "attempt": 0},
		"image":    map[string]any{"image": c.Image},
		"command":  c.Command,
		"args":     c.Args,
		"envs":     envs,
		"mounts":   mounts,
		"log_path": c.Name + ".log",
		"linux":    map[string]any{"security_context": sc},
	}, nil
}

// ContainerLogsAll is `crictl logs` of a container with both of its streams
// (crictl writes the container's stderr to its own stderr), as `kubectl logs`
// shows them.
func (s *Stack) ContainerLogsAll(ctx context.Context, id string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, s.Tools.Crictl, "--config", filepath.Join(s.Dir, "crictl.yaml"), "logs", id).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("crictl logs %s: %w\n%s", id, err, out)
	}
	return string(out), nil
}
