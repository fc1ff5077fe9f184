// winspec-cri: the handful of Container Runtime Interface calls the one-node test cluster
// (tests/node.py) makes itself. Debian has no crictl (cri-tools), so this is compiled by
// .ci/install-kube-apiserver.sh inside the Kubernetes source tree, with the kubelet's own
// vendored CRI client: the same calls, over the same socket, as the kubelet.
//
//	winspec-cri ENDPOINT pods                 pod sandboxes: id state namespace/name uid
//	winspec-cri ENDPOINT containers           containers: id state namespace/pod container
//	winspec-cri ENDPOINT images               images the runtime holds: tags id size
//	winspec-cri ENDPOINT stop-container ID    stop one container at once (SIGKILL), as a crash
//	winspec-cri ENDPOINT remove-pods          stop and remove every sandbox; stopping one runs
//	                                          the CNI DEL that frees its veth, IP and netns
//
// ENDPOINT is unix:///path/to/containerd.sock.
package main

import (
	"fmt"
	"os"
	"time"

	"k8s.io/kubernetes/pkg/kubelet/cri/remote"
)

const timeout = 2 * time.Minute

func main() {
	if len(os.Args) < 3 {
		fail(fmt.Errorf("usage: winspec-cri ENDPOINT pods|containers|images|stop-container ID|remove-pods"))
	}
	endpoint, command, args := os.Args[1], os.Args[2], os.Args[3:]
	runtime, err := remote.NewRemoteRuntimeService(endpoint, timeout)
	check(err)
	switch command {
	case "pods", "remove-pods":
		sandboxes, err := runtime.ListPodSandbox(nil)
		check(err)
		for _, s := range sandboxes {
			m := s.GetMetadata()
			fmt.Printf("%s %s %s/%s %s\n", s.GetId(), s.GetState(), m.GetNamespace(), m.GetName(), m.GetUid())
			if command == "remove-pods" {
				check(runtime.StopPodSandbox(s.GetId()))
				check(runtime.RemovePodSandbox(s.GetId()))
			}
		}
	case "containers":
		containers, err := runtime.ListContainers(nil)
		check(err)
		for _, c := range containers {
			l := c.GetLabels()
			fmt.Printf("%s %s %s/%s %s\n", c.GetId(), c.GetState(), l["io.kubernetes.pod.namespace"],
				l["io.kubernetes.pod.name"], c.GetMetadata().GetName())
		}
	case "stop-container":
		if len(args) != 1 {
			fail(fmt.Errorf("stop-container needs one container id"))
		}
		// A zero grace period: the runtime kills the container outright.
		check(runtime.StopContainer(args[0], 0))
	case "images":
		images, err := remote.NewRemoteImageService(endpoint, timeout)
		check(err)
		list, err := images.ListImages(nil)
		check(err)
		for _, i := range list {
			fmt.Println(i.GetRepoTags(), i.GetId(), i.GetSize_())
		}
	default:
		fail(fmt.Errorf("unknown command %q", command))
	}
}

func check(err error) {
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "winspec-cri:", err)
	os.Exit(1)
}
