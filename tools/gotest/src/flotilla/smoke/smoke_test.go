// Package smoke proves the Go toolchain path: the containerd 1.6.20 client, built from
// Debian's sources, talks to the socket in FLOTILLA_ADDRESS.
package smoke

import (
	"context"
	"os"
	"testing"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/leases"
	"github.com/containerd/containerd/namespaces"
)

func TestVersion(t *testing.T) {
	c, err := containerd.New(os.Getenv("FLOTILLA_ADDRESS"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v, err := c.Version(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if v.Version == "" {
		t.Fatal("empty server version")
	}
	t.Logf("server version %s", v.Version)
}

// The Go client's WithNamespace adds a header in front of any earlier one; containerd uses
// the first value, so the namespace set last wins.
func TestNamespaceSetTwice(t *testing.T) {
	c, err := containerd.New(os.Getenv("FLOTILLA_ADDRESS"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := namespaces.WithNamespace(namespaces.WithNamespace(context.Background(), "smoke-first"), "smoke-second")
	l, err := c.LeasesService().Create(ctx, leases.WithID("smoke-twice"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.LeasesService().Delete(ctx, l)
	for ns, want := range map[string]int{"smoke-second": 1, "smoke-first": 0} {
		got, err := c.LeasesService().List(namespaces.WithNamespace(context.Background(), ns), "id==smoke-twice")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != want {
			t.Fatalf("namespace %s: %d leases named smoke-twice, want %d", ns, len(got), want)
		}
	}
}
