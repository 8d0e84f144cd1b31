// Package smoke proves the Go toolchain path: the containerd 1.6.20 client, built from
// Debian's sources, talks to the socket in FLOTILLA_ADDRESS.
package smoke

import (
	"context"
	"os"
	"testing"

	"github.com/containerd/containerd"
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
