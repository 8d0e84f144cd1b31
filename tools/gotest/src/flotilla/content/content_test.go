// Package content runs containerd's own content conformance suite
// (content/testsuite) against a flotilla gateway through the containerd Go client, the
// way containerd's integration tests run it against a daemon: every case in its own
// namespace and under its own lease. FLOTILLA_ADDRESS names the socket and
// FLOTILLA_NS_PREFIX the prefix of the namespaces (so runs never share state).
package content

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/content"
	"github.com/containerd/containerd/content/testsuite"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/leases"
	"github.com/containerd/containerd/namespaces"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

var storeCount uint64

// newContentStore is a testsuite.StoreInitFn: a client of the gateway, and a context
// wrapper giving each context a fresh namespace and lease. Cleanup aborts the ingests
// and deletes the content left in every namespace the case used, then its leases.
func newContentStore(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
	client, err := containerd.New(os.Getenv("FLOTILLA_ADDRESS"))
	if err != nil {
		return nil, nil, nil, err
	}
	var (
		count uint64
		cs    = client.ContentStore()
		name  = fmt.Sprintf("%s-%s-%d", os.Getenv("FLOTILLA_NS_PREFIX"), testsuite.Name(ctx), atomic.AddUint64(&storeCount, 1))
		used  []context.Context
	)
	wrap := func(ctx context.Context) (context.Context, func(context.Context) error, error) {
		n := atomic.AddUint64(&count, 1)
		ctx = namespaces.WithNamespace(ctx, fmt.Sprintf("%s-n%d", name, n))
		ctx, done, err := client.WithLease(ctx)
		if err != nil {
			return nil, nil, err
		}
		used = append(used, ctx)
		return ctx, done, nil
	}
	ctx = testsuite.SetContextWrapper(ctx, wrap)
	return ctx, cs, func() error {
		for _, ctx := range used {
			statuses, err := cs.ListStatuses(ctx)
			if err != nil {
				return err
			}
			for _, st := range statuses {
				if err := cs.Abort(ctx, st.Ref); err != nil && !errdefs.IsNotFound(err) {
					return fmt.Errorf("failed to abort %s: %w", st.Ref, err)
				}
			}
			if err := cs.Walk(ctx, func(info content.Info) error {
				if err := cs.Delete(ctx, info.Digest); err != nil && !errdefs.IsNotFound(err) {
					return err
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return client.Close()
	}, nil
}

func TestContentSuite(t *testing.T) {
	testsuite.ContentSuite(t, "ContentClient", newContentStore)
}

func TestContentCrossNSShared(t *testing.T) {
	testsuite.ContentCrossNSSharedSuite(t, "ContentClient", newContentStore)
}

// TestContentLeases checks what containerd's metadata store records under the
// containerd-lease header: an open ingest is a lease resource (ingests/<ref>), a commit
// swaps it for the content (content/<digest>), a delete drops it, and a writer under a
// lease that does not exist fails with NotFound.
func TestContentLeases(t *testing.T) {
	client, err := containerd.New(os.Getenv("FLOTILLA_ADDRESS"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), os.Getenv("FLOTILLA_NS_PREFIX")+"-leases")
	ctx, done, err := client.WithLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer done(ctx)
	lid, _ := leases.FromContext(ctx)
	ls := client.LeasesService()
	resources := func() map[string]bool {
		t.Helper()
		rs, err := ls.ListResources(ctx, leases.Lease{ID: lid})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, r := range rs {
			out[r.Type+"/"+r.ID] = true
		}
		return out
	}
	cs := client.ContentStore()
	blob := []byte("leased content")
	dgst := digest.FromBytes(blob)
	w, err := cs.Writer(ctx, content.WithRef("leased-ref"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(blob[:6]); err != nil {
		t.Fatal(err)
	}
	if rs := resources(); !rs["ingests/leased-ref"] || len(rs) != 1 {
		t.Fatalf("open ingest: lease resources %v, expected ingests/leased-ref", rs)
	}
	if _, err := w.Write(blob[6:]); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, int64(len(blob)), dgst); err != nil {
		t.Fatal(err)
	}
	if rs := resources(); !rs["content/"+dgst.String()] || len(rs) != 1 {
		t.Fatalf("after commit: lease resources %v, expected content/%s", rs, dgst)
	}
	if err := cs.Delete(ctx, dgst); err != nil {
		t.Fatal(err)
	}
	if rs := resources(); len(rs) != 0 {
		t.Fatalf("after delete: lease resources %v, expected none", rs)
	}
	bad := leases.WithLease(ctx, "no-such-lease")
	if _, err := cs.Writer(bad, content.WithRef("unleased")); !errdefs.IsNotFound(err) {
		t.Fatalf("writer under a missing lease: %v, expected not found", err)
	}
}

// TestResumeIngest resumes an interrupted ingest (FLOTILLA_RESUME_REF in namespace
// FLOTILLA_RESUME_NS, the whole blob in FLOTILLA_RESUME_FILE): the writer must report
// FLOTILLA_RESUME_OFFSET, the rest is written from there and the commit verifies the
// digest. Skipped unless FLOTILLA_RESUME_REF is set.
func TestResumeIngest(t *testing.T) {
	ref := os.Getenv("FLOTILLA_RESUME_REF")
	if ref == "" {
		t.Skip("FLOTILLA_RESUME_REF not set")
	}
	wantOffset, err := strconv.ParseInt(os.Getenv("FLOTILLA_RESUME_OFFSET"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	client, err := containerd.New(os.Getenv("FLOTILLA_ADDRESS"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), os.Getenv("FLOTILLA_RESUME_NS"))
	f, err := os.Open(os.Getenv("FLOTILLA_RESUME_FILE"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	dgst, err := digest.FromReader(f)
	if err != nil {
		t.Fatal(err)
	}
	cs := client.ContentStore()
	w, err := cs.Writer(ctx, content.WithRef(ref), content.WithDescriptor(ocispec.Descriptor{Size: fi.Size(), Digest: dgst}))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	st, err := w.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Offset != wantOffset || st.Offset == 0 {
		t.Fatalf("writer reports offset %d, expected %d (> 0)", st.Offset, wantOffset)
	}
	t.Logf("resuming %s at offset %d of %d", ref, st.Offset, fi.Size())
	if _, err := f.Seek(st.Offset, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyBuffer(w, f, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, fi.Size(), dgst); err != nil {
		t.Fatal(err)
	}
	info, err := cs.Info(ctx, dgst)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != fi.Size() {
		t.Fatalf("committed size %d, expected %d", info.Size, fi.Size())
	}
	t.Logf("committed %s", dgst)
}
