// Command informer-sync is the client-go side of bench/k8s_sync.py: a
// shared-informer factory over Services and EndpointSlices, the way a Go
// controller would watch them. It prints one JSON line with the time from
// start to all caches synced, the object counts and its RSS, so the bench can
// put client-go next to nodemesh's watcher on the same cluster in one run.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

func rssMiB() float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "VmRSS:")), "%f", &kb)
			return kb / 1024
		}
	}
	return -1
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster to sync from")
	timeout := flag.Duration("timeout", 120*time.Second, "give up after this long")
	flag.Parse()
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "informer-sync: kubeconfig %s: %v\n", *kubeconfig, err)
		os.Exit(1)
	}
	// Same client-side budget as a default controller would get raised to;
	// the default 5 QPS only matters for writes here.
	cfg.QPS, cfg.Burst = 50, 100
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	start := time.Now()
	factory := informers.NewSharedInformerFactory(client, 0)
	services := factory.Core().V1().Services().Informer()
	slices := factory.Discovery().V1().EndpointSlices().Informer()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), services.HasSynced, slices.HasSynced) {
		fmt.Fprintln(os.Stderr, "informer-sync: caches did not sync before the timeout")
		os.Exit(1)
	}
	took := time.Since(start)
	endpoints := 0
	all, _ := factory.Discovery().V1().EndpointSlices().Lister().List(labels.Everything())
	for _, obj := range all {
		endpoints += len(obj.Endpoints)
	}
	runtime.GC()
	out, _ := json.Marshal(map[string]any{
		"sync_s":    took.Seconds(),
		"services":  len(services.GetStore().List()),
		"slices":    len(slices.GetStore().List()),
		"endpoints": endpoints,
		"rss_mib":   rssMiB(),
	})
	fmt.Println(string(out))
	cancel()
	factory.Shutdown()
}
