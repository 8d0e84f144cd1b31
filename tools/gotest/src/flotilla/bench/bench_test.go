// Package bench holds the benchmark workloads (tools/bench) where spawning one ctr per call
// would dominate what is measured: containers at scale and event latency. Each test reads
// its parameters from BENCH_* variables and prints one line `BENCHJSON {...}` with its
// measurements; the harness runs the same binary against containerd and flotilla.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd"
	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/typeurl"
)

func env(t *testing.T, name string) string {
	v := os.Getenv(name)
	if v == "" {
		t.Skipf("%s not set: run through npm run bench", name)
	}
	return v
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

func report(v interface{}) {
	b, _ := json.Marshal(v)
	fmt.Printf("BENCHJSON %s\n", b)
}

func connect(t *testing.T) (*containerd.Client, context.Context) {
	c, err := containerd.New(env(t, "BENCH_ADDRESS"), containerd.WithTimeout(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, namespaces.WithNamespace(context.Background(), env(t, "BENCH_NAMESPACE"))
}

// parallel runs f(0..n-1) on `workers` goroutines and returns the first error.
func parallel(n, workers int, f func(i int) error) error {
	var next int64 = -1
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(atomic.AddInt64(&next, 1))
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// TestContainers creates BENCH_COUNT containers (BENCH_WORKERS at a time), lists them
// BENCH_LIST_REPEAT times, then deletes them all; reports each phase's wall time.
// BENCH_PHASES (default create,list,delete) runs only some phases: a profiling session
// creates once and lists many times (list expects BENCH_COUNT containers there).
func TestContainers(t *testing.T) {
	c, ctx := connect(t)
	count := envInt(t, "BENCH_COUNT", 1000)
	workers := envInt(t, "BENCH_WORKERS", 8)
	repeat := envInt(t, "BENCH_LIST_REPEAT", 3)
	phases := os.Getenv("BENCH_PHASES")
	if phases == "" {
		phases = "create,list,delete"
	}
	phase := func(p string) bool { return strings.Contains(","+phases+",", ","+p+",") }
	out := map[string]interface{}{"count": count, "workers": workers}
	// One spec for all: what is measured is the store, not spec generation in the client.
	spec, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: "bench"}, oci.WithProcessArgs("/bin/true"))
	if err != nil {
		t.Fatal(err)
	}
	id := func(i int) string { return fmt.Sprintf("bench-%06d", i) }

	if phase("create") {
		start := time.Now()
		if err := parallel(count, workers, func(i int) error {
			_, err := c.NewContainer(ctx, id(i), containerd.WithSpec(spec), containerd.WithContainerLabels(map[string]string{"bench": "1"}))
			return err
		}); err != nil {
			t.Fatalf("create: %v", err)
		}
		out["create_s"] = time.Since(start).Seconds()
	}

	if phase("list") {
		lists := []float64{}
		for r := 0; r < repeat; r++ {
			start := time.Now()
			got, err := c.Containers(ctx)
			if err != nil {
				t.Fatalf("list: %v", err)
			}
			lists = append(lists, time.Since(start).Seconds())
			if len(got) != count {
				t.Fatalf("list returned %d containers, want %d", len(got), count)
			}
		}
		out["list_s"] = lists
	}

	if phase("delete") {
		start := time.Now()
		if err := parallel(count, workers, func(i int) error {
			return c.ContainerService().Delete(ctx, id(i))
		}); err != nil {
			t.Fatalf("delete: %v", err)
		}
		out["delete_s"] = time.Since(start).Seconds()
		left, err := c.Containers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(left) != 0 {
			t.Fatalf("%d containers left after delete", len(left))
		}
	}
	report(out)
}

// TestEventLatency runs BENCH_COUNT tasks of /bin/true from BENCH_IMAGE (already unpacked
// in the namespace) and measures, for each, the time from the exit the shim recorded
// (TaskExit.ExitedAt) to the /tasks/exit event reaching this subscriber; also from the
// envelope's publish timestamp to the subscriber.
func TestEventLatency(t *testing.T) {
	c, ctx := connect(t)
	count := envInt(t, "BENCH_COUNT", 5)
	image, err := c.GetImage(ctx, env(t, "BENCH_IMAGE"))
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evs, errs := c.Subscribe(sctx, `topic=="/tasks/exit"`)
	type exit struct {
		at, published, received time.Time
	}
	exits := make(chan struct {
		id string
		e  exit
	}, 16)
	go func() {
		for {
			select {
			case e := <-evs:
				received := time.Now()
				v, err := typeurl.UnmarshalAny(e.Event)
				if err != nil {
					continue
				}
				if te, ok := v.(*eventsapi.TaskExit); ok {
					exits <- struct {
						id string
						e  exit
					}{te.ContainerID, exit{te.ExitedAt, e.Timestamp, received}}
				}
			case err := <-errs:
				if err != nil && sctx.Err() == nil {
					t.Errorf("subscribe: %v", err)
				}
				return
			}
		}
	}()
	// Let the subscription reach the server before the first task exits.
	time.Sleep(500 * time.Millisecond)

	latencies, publish, received := []float64{}, []float64{}, []int64{}
	for i := 0; i < count; i++ {
		id := fmt.Sprintf("bench-ev-%d-%d", time.Now().UnixNano(), i)
		ctr, err := c.NewContainer(ctx, id, containerd.WithNewSnapshot(id, image), containerd.WithNewSpec(oci.WithImageConfig(image), oci.WithProcessArgs("/bin/true")))
		if err != nil {
			t.Fatalf("container: %v", err)
		}
		task, err := ctr.NewTask(ctx, cio.NullIO)
		if err != nil {
			t.Fatalf("task: %v", err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatalf("start: %v", err)
		}
		timeout := time.After(60 * time.Second)
	wait:
		for {
			select {
			case x := <-exits:
				if x.id != id {
					continue
				}
				if x.e.at.IsZero() {
					t.Fatalf("TaskExit without exited_at")
				}
				latencies = append(latencies, x.e.received.Sub(x.e.at).Seconds())
				publish = append(publish, x.e.received.Sub(x.e.published).Seconds())
				received = append(received, x.e.received.UnixNano())
				break wait
			case <-timeout:
				t.Fatalf("no /tasks/exit for %s within 60 s", id)
			}
		}
		if _, err := task.Delete(ctx); err != nil {
			t.Fatalf("task delete: %v", err)
		}
		if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
			t.Fatalf("container delete: %v", err)
		}
	}
	report(map[string]interface{}{"count": count, "exit_to_subscriber_s": latencies, "publish_to_subscriber_s": publish, "received_unix_ns": received})
}
