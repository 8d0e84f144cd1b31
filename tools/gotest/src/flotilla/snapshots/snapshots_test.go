// Package snapshots runs containerd's own snapshotter conformance suite
// (snapshots/testsuite) against flotilla's snapshotters through the gateway, with the
// containerd Go client's remote snapshotter (client.SnapshotService(name)).
//
// The suite runs its cases in parallel, all in the namespace "testsuite", and names
// snapshots alike across cases ("preparing", "committed", ...). containerd gives each case
// a fresh snapshotter root; a remote snapshotter has one store, so the harness gives each
// case a namespace of its own instead: every call's context is re-pinned to it.
package snapshots

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc/metadata"
)

var seq int64

// pinned is a snapshotter whose every call runs in namespace ns, whatever the caller's
// context says (deadlines, values and cancellation are kept).
type pinned struct {
	snapshots.Snapshotter
	ns string
}

// c re-pins ctx. namespaces.WithNamespace appends to the outgoing gRPC metadata, which
// would send the suite's namespace too; the header is replaced instead.
func (p *pinned) c(ctx context.Context) context.Context {
	if md, ok := metadata.FromOutgoingContext(ctx); ok {
		md = md.Copy()
		delete(md, namespaces.GRPCHeader)
		ctx = metadata.NewOutgoingContext(ctx, md)
	}
	return namespaces.WithNamespace(ctx, p.ns)
}

func (p *pinned) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	return p.Snapshotter.Stat(p.c(ctx), key)
}
func (p *pinned) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	return p.Snapshotter.Update(p.c(ctx), info, fieldpaths...)
}
func (p *pinned) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	return p.Snapshotter.Usage(p.c(ctx), key)
}
func (p *pinned) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	return p.Snapshotter.Mounts(p.c(ctx), key)
}
func (p *pinned) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return p.Snapshotter.Prepare(p.c(ctx), key, parent, opts...)
}
func (p *pinned) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return p.Snapshotter.View(p.c(ctx), key, parent, opts...)
}
func (p *pinned) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return p.Snapshotter.Commit(p.c(ctx), name, key, opts...)
}
func (p *pinned) Remove(ctx context.Context, key string) error {
	return p.Snapshotter.Remove(p.c(ctx), key)
}
func (p *pinned) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return p.Snapshotter.Walk(p.c(ctx), fn, filters...)
}

// removeAll removes every snapshot of the namespace, children before parents.
func (p *pinned) removeAll(ctx context.Context) error {
	for round := 0; round < 256; round++ {
		var infos []snapshots.Info
		if err := p.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
			infos = append(infos, i)
			return nil
		}); err != nil {
			return err
		}
		if len(infos) == 0 {
			return nil
		}
		parents := map[string]bool{}
		for _, i := range infos {
			parents[i.Parent] = true
		}
		for _, i := range infos {
			if !parents[i.Name] {
				if err := p.Remove(ctx, i.Name); err != nil {
					return fmt.Errorf("remove %s: %w", i.Name, err)
				}
			}
		}
	}
	return fmt.Errorf("snapshots left in %s", p.ns)
}

func suite(t *testing.T, name string) {
	addr := os.Getenv("FLOTILLA_ADDRESS")
	if addr == "" {
		t.Fatal("FLOTILLA_ADDRESS is not set")
	}
	client, err := containerd.New(addr, containerd.WithTimeout(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	run := fmt.Sprintf("%s-%d", os.Getenv("FLOTILLA_NS_PREFIX"), time.Now().UnixNano())
	testsuite.SnapshotterSuite(t, name, func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		p := &pinned{Snapshotter: client.SnapshotService(name), ns: fmt.Sprintf("%s-%s-%d", run, name, atomic.AddInt64(&seq, 1))}
		return p, func() error {
			ctx := context.Background()
			if err := p.removeAll(ctx); err != nil {
				return err
			}
			// The namespace may be unknown to the namespaces service (snapshots alone do not
			// record one there); only a failure other than NotFound matters.
			if err := client.NamespaceService().Delete(ctx, p.ns); err != nil && !errdefs.IsNotFound(err) {
				return err
			}
			return nil
		}, nil
	})
}

func TestOverlayfs(t *testing.T) { suite(t, "overlayfs") }
func TestNative(t *testing.T)    { suite(t, "native") }
