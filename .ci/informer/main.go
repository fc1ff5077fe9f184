// winspec-informer: the reference controller of tests/benchmarks/bench_kubernetes.py, a plain
// client-go controller doing per WindowsContainer what winspec does at the API and on disk, the
// way Go controllers are usually written: a dynamic shared informer (list + watch) of one
// namespace's WindowsContainers, a rate-limited work queue and a pool of workers. Per resource:
// GET each referenced Secret, merge-patch the finalizer on, write a file of the size of winspec's
// bundle and fsync it, merge-patch the status winspec writes for a Ready resource (digest,
// observedGeneration, three conditions). A resource already done (finalizer present, status of
// its generation) is skipped: its own patches come back as watch events. Being deleted: the file
// is removed, then the finalizer.
//
// Compiled only on request by .ci/install-kube-apiserver.sh --bench, inside the Kubernetes 1.20
// source tree (GOPATH mode, its vendored client-go), into the same bin directory as the
// Kubernetes binaries.
//
//	winspec-informer --kubeconfig FILE --namespace NS --out DIR [--workers 16]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/workqueue"
)

const finalizer = "winspec.io/bundle"

var resourceKind = schema.GroupVersionResource{Group: "winspec.io", Version: "v1alpha1", Resource: "windowscontainers"}

type controller struct {
	dynamic dynamic.NamespaceableResourceInterface
	core    kubernetes.Interface
	lister  cache.GenericNamespaceLister
	queue   workqueue.RateLimitingInterface
	out     string
	payload []byte
	ns      string
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig file")
	namespace := flag.String("namespace", "default", "the namespace to watch")
	out := flag.String("out", "", "directory of the per-resource files")
	workers := flag.Int("workers", 16, "workers")
	flag.Parse()
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	check(err)
	// client-go's default client-side limit (5 requests/s, bursts of 10) would be the bottleneck:
	// the other clients of the benchmark have none.
	config.QPS, config.Burst = 100000, 100000
	check(os.MkdirAll(*out, 0o700))
	dyn, err := dynamic.NewForConfig(config)
	check(err)
	core, err := kubernetes.NewForConfig(config)
	check(err)

	factory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(dyn, 0, *namespace, nil)
	informer := factory.ForResource(resourceKind)
	c := &controller{
		dynamic: dyn.Resource(resourceKind),
		core:    core,
		lister:  informer.Lister().ByNamespace(*namespace),
		queue:   workqueue.NewRateLimitingQueue(workqueue.DefaultControllerRateLimiter()),
		out:     *out,
		payload: make([]byte, 4200),
		ns:      *namespace,
	}
	enqueue := func(obj interface{}) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj interface{}) { enqueue(obj) },
	})

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), informer.Informer().HasSynced) {
		fail(fmt.Errorf("the informer did not sync"))
	}
	for i := 0; i < *workers; i++ {
		go wait.UntilWithContext(ctx, c.work, time.Second)
	}
	<-ctx.Done()
	c.queue.ShutDown()
}

func (c *controller) work(ctx context.Context) {
	for {
		key, quit := c.queue.Get()
		if quit {
			return
		}
		if err := c.reconcile(ctx, key.(string)); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", key, err)
			c.queue.AddRateLimited(key)
		} else {
			c.queue.Forget(key)
		}
		c.queue.Done(key)
	}
}

func (c *controller) reconcile(ctx context.Context, key string) error {
	_, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	obj, err := c.lister.Get(name)
	if err != nil {
		return nil // gone
	}
	item := obj.(*unstructured.Unstructured)
	file := filepath.Join(c.out, name)
	if item.GetDeletionTimestamp() != nil {
		if err := os.Remove(file); err != nil && !os.IsNotExist(err) {
			return err
		}
		return c.patch(ctx, name, "", map[string]interface{}{"metadata": map[string]interface{}{
			"finalizers": without(item.GetFinalizers(), finalizer), "resourceVersion": item.GetResourceVersion()}})
	}
	observed, _, _ := unstructured.NestedInt64(item.Object, "status", "observedGeneration")
	if has(item.GetFinalizers(), finalizer) && observed == item.GetGeneration() {
		return nil // done
	}
	secrets, _, _ := unstructured.NestedSlice(item.Object, "spec", "secrets")
	for _, ref := range secrets {
		if secret, ok := ref.(map[string]interface{})["secretName"].(string); ok {
			if _, err := c.core.CoreV1().Secrets(c.ns).Get(ctx, secret, metav1.GetOptions{}); err != nil {
				return err
			}
		}
	}
	version := item.GetResourceVersion()
	if !has(item.GetFinalizers(), finalizer) {
		patched, err := c.dynamic.Namespace(c.ns).Patch(ctx, name, types.MergePatchType, mustJSON(
			map[string]interface{}{"metadata": map[string]interface{}{
				"finalizers": append(item.GetFinalizers(), finalizer), "resourceVersion": version}}),
			metav1.PatchOptions{})
		if err != nil {
			return err
		}
		version = patched.GetResourceVersion()
	}
	if err := c.write(file); err != nil {
		return err
	}
	status := map[string]interface{}{"digest": fmt.Sprintf("%064d", 0), "observedGeneration": item.GetGeneration(),
		"conditions": conditions(item.GetGeneration())}
	return c.patch(ctx, name, "status", map[string]interface{}{
		"metadata": map[string]interface{}{"resourceVersion": version}, "status": status})
}

func (c *controller) patch(ctx context.Context, name, subresource string, body map[string]interface{}) error {
	var sub []string
	if subresource != "" {
		sub = []string{subresource}
	}
	_, err := c.dynamic.Namespace(c.ns).Patch(ctx, name, types.MergePatchType, mustJSON(body), metav1.PatchOptions{}, sub...)
	return err
}

func (c *controller) write(file string) error {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(c.payload); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// conditions: winspec's status of a Ready resource (the benchmark's controller floor writes the same).
func conditions(generation int64) []interface{} {
	var out []interface{}
	for _, c := range [][3]string{
		{"SpecGenerated", "Generated", "the spec was generated"},
		{"BundleWritten", "Written", "bundle 0123456789ab is on disk"},
		{"Ready", "BundleReady", "the bundle is current"},
	} {
		out = append(out, map[string]interface{}{"type": c[0], "status": "True", "reason": c[1], "message": c[2],
			"observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"})
	}
	return out
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func without(list []string, s string) []string {
	out := []string{}
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

func mustJSON(v interface{}) []byte {
	data, err := json.Marshal(v)
	check(err)
	return data
}

func check(err error) {
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "winspec-informer:", err)
	os.Exit(1)
}
