// Package client runs flotilla through containerd 1.6.20's own Go client, built from
// Debian's sources: import and unpack, run with output, exec, pause/resume, kill, events
// and lease-protected content. Environment: FLOTILLA_ADDRESS (the gateway socket),
// FLOTILLA_IMAGE_ARCHIVE (an OCI archive) and FLOTILLA_IMAGE_NAME (the name it imports as).
package client

import (
	"bytes"
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/content"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/leases"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/typeurl"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	cgroupsv1 "github.com/containerd/cgroups/stats/v1"
	cgroupsv2 "github.com/containerd/cgroups/v2/stats"

	apievents "github.com/containerd/containerd/api/events"
)

const snapshotter = "overlayfs"

func setup(t *testing.T) (context.Context, *containerd.Client, containerd.Image) {
	t.Helper()
	c, err := containerd.New(os.Getenv("FLOTILLA_ADDRESS"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ns := "go-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ns), 3*time.Minute)
	t.Cleanup(cancel)
	f, err := os.Open(os.Getenv("FLOTILLA_IMAGE_ARCHIVE"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := c.Import(ctx, f); err != nil {
		t.Fatalf("import: %v", err)
	}
	img, err := c.GetImage(ctx, os.Getenv("FLOTILLA_IMAGE_NAME"))
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Unpack(ctx, snapshotter); err != nil {
		t.Fatalf("unpack: %v", err)
	}
	return ctx, c, img
}

// newContainer creates a container running args, removed (with its snapshot) at the end.
func newContainer(t *testing.T, ctx context.Context, c *containerd.Client, img containerd.Image, id string, args ...string) containerd.Container {
	t.Helper()
	ctr, err := c.NewContainer(ctx, id,
		containerd.WithSnapshotter(snapshotter),
		containerd.WithNewSnapshot(id+"-snap", img),
		containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs(args...)))
	if err != nil {
		t.Fatalf("new container: %v", err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), mustNS(ctx)), time.Minute)
		defer cancel()
		if task, err := ctr.Task(cctx, nil); err == nil {
			task.Kill(cctx, syscall.SIGKILL, containerd.WithKillAll)
			task.Delete(cctx, containerd.WithProcessKill)
		}
		ctr.Delete(cctx, containerd.WithSnapshotCleanup)
	})
	return ctr
}

func mustNS(ctx context.Context) string {
	ns, _ := namespaces.Namespace(ctx)
	return ns
}

func TestImportAndUnpack(t *testing.T) {
	ctx, _, img := setup(t)
	ok, err := img.IsUnpacked(ctx, snapshotter)
	if err != nil || !ok {
		t.Fatalf("unpacked = %v, %v", ok, err)
	}
	size, err := img.Size(ctx)
	if err != nil || size <= 0 {
		t.Fatalf("size = %d, %v", size, err)
	}
	if img.Target().MediaType != ocispec.MediaTypeImageManifest {
		t.Fatalf("target media type %s", img.Target().MediaType)
	}
}

func TestRunWithOutput(t *testing.T) {
	ctx, c, img := setup(t)
	ctr := newContainer(t, ctx, c, img, "out", "/bin/sh", "-c", "echo hello from $(hostname); echo oops >&2; exit 7")
	// One buffer each: bytes.Buffer's ReadFrom, which io.Copy uses, is not safe to share.
	var out, errOut bytes.Buffer
	task, err := ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, &out, &errOut)))
	if err != nil {
		t.Fatal(err)
	}
	statusC, err := task.Wait(ctx) // before Start, as clients do
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st := <-statusC
	code, _, err := st.Result()
	if err != nil || code != 7 {
		t.Fatalf("exit %d, %v", code, err)
	}
	task.IO().Wait() // the copy of stdout finishes after the exit is reported
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.HasPrefix(got, "hello from ") || errOut.String() != "oops\n" {
		t.Fatalf("stdout %q, stderr %q", got, errOut.String())
	}
}

func TestExec(t *testing.T) {
	ctx, c, img := setup(t)
	ctr := newContainer(t, ctx, c, img, "exec", "/bin/sleep", "1000")
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	spec, err := ctr.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pspec := spec.Process
	pspec.Args = []string{"/bin/sh", "-c", "echo exec says hi; exit 3"}
	var out, errOut bytes.Buffer
	p, err := task.Exec(ctx, "e1", pspec, cio.NewCreator(cio.WithStreams(nil, &out, &errOut)))
	if err != nil {
		t.Fatal(err)
	}
	statusC, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st := <-statusC
	if st.ExitCode() != 3 {
		t.Fatalf("exec exit %d, %v", st.ExitCode(), st.Error())
	}
	p.IO().Wait() // the copy of stdout finishes after the exit is reported
	if _, err := p.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if out.String() != "exec says hi\n" {
		t.Fatalf("exec output %q", out.String())
	}
	pids, err := task.Pids(ctx)
	if err != nil || len(pids) != 1 || pids[0].Pid != task.Pid() {
		t.Fatalf("pids %v, %v", pids, err)
	}
}

func TestPauseResumeKill(t *testing.T) {
	ctx, c, img := setup(t)
	ctr := newContainer(t, ctx, c, img, "pr", "/bin/sleep", "1000")
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	statusC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	check := func(want containerd.ProcessStatus) {
		t.Helper()
		st, err := task.Status(ctx)
		if err != nil || st.Status != want {
			t.Fatalf("status %v, %v; want %v", st.Status, err, want)
		}
	}
	check(containerd.Running)
	if err := task.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	check(containerd.Paused)
	if err := task.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	check(containerd.Running)
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st := <-statusC
	if st.ExitCode() != 137 {
		t.Fatalf("exit %d after SIGKILL", st.ExitCode())
	}
	check(containerd.Stopped)
	ds, err := task.Delete(ctx)
	if err != nil || ds.ExitCode() != 137 {
		t.Fatalf("delete: %v, %v", ds, err)
	}
	if _, err := ctr.Task(ctx, nil); !errdefs.IsNotFound(err) {
		t.Fatalf("task after delete: %v", err)
	}
}

func TestEvents(t *testing.T) {
	ctx, c, img := setup(t)
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	ns := mustNS(ctx)
	evC, errC := c.Subscribe(sctx, `topic~="/tasks/",namespace==`+ns)
	ctr := newContainer(t, ctx, c, img, "ev", "/bin/true")
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	statusC, _ := task.Wait(ctx)
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	<-statusC
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"}
	var got []string
	for len(got) < len(want) {
		select {
		case e := <-evC:
			if e.Namespace != ns || !strings.HasPrefix(e.Topic, "/tasks/") {
				t.Fatalf("filtered subscription got %s %s", e.Namespace, e.Topic)
			}
			v, err := typeurl.UnmarshalAny(e.Event)
			if err != nil {
				t.Fatalf("event %s: %v", e.Topic, err)
			}
			if ex, ok := v.(*apievents.TaskExit); ok && (ex.ContainerID != "ev" || ex.ExitStatus != 0) {
				t.Fatalf("exit event %+v", ex)
			}
			got = append(got, e.Topic)
		case err := <-errC:
			t.Fatalf("subscription: %v", err)
		case <-ctx.Done():
			t.Fatalf("events so far %v", got)
		}
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("events %v, want %v", got, want)
	}
}

func TestLeaseProtectedContent(t *testing.T) {
	ctx, c, _ := setup(t)
	ls := c.LeasesService()
	l, err := ls.Create(ctx, leases.WithRandomID())
	if err != nil {
		t.Fatal(err)
	}
	lctx := leases.WithLease(ctx, l.ID)
	blob := []byte("held by a lease only " + t.Name())
	dgst := digest.FromBytes(blob)
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: dgst, Size: int64(len(blob))}
	if err := content.WriteBlob(lctx, c.ContentStore(), "lease-blob", bytes.NewReader(blob), desc); err != nil {
		t.Fatal(err)
	}
	res, err := ls.ListResources(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	held := false
	for _, r := range res {
		held = held || (r.Type == "content" && r.ID == dgst.String())
	}
	if !held {
		t.Fatalf("lease resources %v lack %s", res, dgst)
	}
	if _, err := c.ContentStore().Info(ctx, dgst); err != nil {
		t.Fatalf("content under a lease: %v", err)
	}
	// Deleting the lease synchronously collects what only it held.
	if err := ls.Delete(ctx, l, leases.SynchronousDelete); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ContentStore().Info(ctx, dgst); !errdefs.IsNotFound(err) {
		t.Fatalf("content after its lease went: %v", err)
	}
}

// Update sets the task's memory limit; Metrics reports it in containerd's cgroup types.
func TestUpdateAndMetrics(t *testing.T) {
	ctx, c, img := setup(t)
	ctr := newContainer(t, ctx, c, img, "upd", "/bin/sleep", "1000")
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	limit := int64(64 << 20)
	if err := task.Update(ctx, containerd.WithResources(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}})); err != nil {
		t.Fatal(err)
	}
	m, err := task.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != "upd" {
		t.Fatalf("metric id %q", m.ID)
	}
	v, err := typeurl.UnmarshalAny(m.Data)
	if err != nil {
		t.Fatalf("metrics data %s: %v", m.Data.TypeUrl, err)
	}
	switch s := v.(type) {
	case *cgroupsv1.Metrics:
		if s.Memory == nil || s.Memory.Usage == nil || s.Memory.Usage.Limit != uint64(limit) || s.Pids == nil || s.Pids.Current != 1 {
			t.Fatalf("v1 metrics %+v", s)
		}
	case *cgroupsv2.Metrics:
		if s.Memory == nil || s.Memory.UsageLimit != uint64(limit) || s.Pids == nil || s.Pids.Current != 1 {
			t.Fatalf("v2 metrics %+v", s)
		}
	default:
		t.Fatalf("metrics of type %T", v)
	}
}

// Publish and Forward put events on the bus; a subscriber filtering on topic and event
// fields gets exactly those; an invalid topic is InvalidArgument.
func TestPublishForward(t *testing.T) {
	c, err := containerd.New(os.Getenv("FLOTILLA_ADDRESS"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ns := "go-publish"
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ns), time.Minute)
	defer cancel()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	evC, errC := c.Subscribe(sctx, `topic~="^/flotilla-test/",event.id=="wanted"`)
	es := c.EventService()
	// The subscription is live once one of our events comes back; publish until it does.
	next := func() *events.Envelope {
		t.Helper()
		for {
			select {
			case e := <-evC:
				return e
			case err := <-errC:
				t.Fatalf("subscription: %v", err)
			case <-time.After(200 * time.Millisecond):
				if err := es.Publish(ctx, "/flotilla-test/probe", &apievents.ContainerDelete{ID: "wanted"}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for e := next(); e.Topic != "/flotilla-test/probe"; e = next() {
	}
	if err := es.Publish(ctx, "/flotilla-test/published", &apievents.ContainerDelete{ID: "other"}); err != nil {
		t.Fatal(err)
	}
	any, err := typeurl.MarshalAny(&apievents.ContainerDelete{ID: "wanted"})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := es.Forward(ctx, &events.Envelope{Timestamp: at, Namespace: "go-forwarded", Topic: "/flotilla-test/forwarded", Event: any}); err != nil {
		t.Fatal(err)
	}
	for {
		e := next()
		if e.Topic == "/flotilla-test/probe" {
			continue
		}
		if e.Topic != "/flotilla-test/forwarded" || e.Namespace != "go-forwarded" || !e.Timestamp.Equal(at) {
			t.Fatalf("got %s %s %v; want the forwarded envelope as sent (the other event is filtered out)", e.Namespace, e.Topic, e.Timestamp)
		}
		v, err := typeurl.UnmarshalAny(e.Event)
		if err != nil || v.(*apievents.ContainerDelete).ID != "wanted" {
			t.Fatalf("event %v, %v", v, err)
		}
		break
	}
	if err := es.Publish(ctx, "no-slash", &apievents.ContainerDelete{ID: "x"}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("publish to an invalid topic: %v", err)
	}
}
