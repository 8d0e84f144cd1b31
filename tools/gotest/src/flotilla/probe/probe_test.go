// Package probe times small calls through the containerd Go client, for tools/bench/probe.ts:
// the fixed cost of one call on either side, which the benchmark's workloads pay many times.
package probe

import (
	"context"
	"fmt"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/content"
	"github.com/containerd/containerd/namespaces"
)

func TestProbe(t *testing.T) {
	c, err := containerd.New(os.Getenv("BENCH_ADDRESS"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := namespaces.WithNamespace(context.Background(), os.Getenv("BENCH_NAMESPACE"))
	img, err := c.GetImage(ctx, os.Getenv("BENCH_IMAGE"))
	if err != nil {
		t.Fatal(err)
	}
	dg := img.Target().Digest
	cs := c.ContentStore()
	ops := map[string]func() error{
		"version":      func() error { _, err := c.Version(ctx); return err },
		"ns.get":       func() error { _, err := c.NamespaceService().Labels(ctx, os.Getenv("BENCH_NAMESPACE")); return err },
		"content.info": func() error { _, err := cs.Info(ctx, dg); return err },
		"content.read": func() error { _, err := content.ReadBlob(ctx, cs, img.Target()); return err },
		"images.get":   func() error { _, err := c.ImageService().Get(ctx, os.Getenv("BENCH_IMAGE")); return err },
	}
	names := []string{"version", "ns.get", "content.info", "content.read", "images.get"}
	n := 500
	if v := os.Getenv("PROBE_N"); v != "" {
		fmt.Sscan(v, &n)
	}
	res := map[string][]time.Duration{}
	for i := 0; i < n; i++ {
		for _, k := range names {
			s := time.Now()
			if err := ops[k](); err != nil {
				t.Fatal(k, err)
			}
			res[k] = append(res[k], time.Since(s))
		}
	}
	for _, k := range names {
		x := res[k]
		sort.Slice(x, func(i, j int) bool { return x[i] < x[j] })
		fmt.Printf("PROBE %-14s p50 %7.1f µs p10 %7.1f p90 %7.1f\n", k, float64(x[n/2].Microseconds()), float64(x[n/10].Microseconds()), float64(x[n*9/10].Microseconds()))
	}
}
