// containerd-bench compares two snapshotters served on unix sockets, both driven through
// containerd's own client for a proxy snapshotter (snapshots/proxy), so the client side,
// the wire and the filesystem are the same for both and only the server differs.
//
//	containerd-bench serve ROOT SOCKET
//	    serves containerd's overlay snapshotter (snapshots/overlay, with the asynchronous
//	    remove containerd's overlayfs plugin configures) the way containerd's proxy plugin
//	    documentation does: contrib/snapshotservice on a grpc server.
//	containerd-bench compare -ours SOCKET -theirs SOCKET -work DIR [-quick] [-json FILE]
//	    runs the workloads on both, rounds interleaved A B B A, and prints for each the
//	    median of each system and the ratio ours / theirs (below 1: ours is faster).
//
// It builds with Debian's Go packages in GOPATH mode; `cargo xtask bench --against
// containerd` builds and runs it.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/overlay"
	"github.com/containerd/containerd/snapshots/proxy"
	"google.golang.org/grpc"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "serve":
		if len(os.Args) != 4 {
			usage()
		}
		if err := serve(os.Args[2], os.Args[3]); err != nil {
			fmt.Fprintln(os.Stderr, "containerd-bench serve:", err)
			os.Exit(1)
		}
	case "compare":
		if err := compare(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "containerd-bench compare:", err)
			os.Exit(1)
		}
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: containerd-bench serve ROOT SOCKET\n"+
		"       containerd-bench compare -ours SOCKET -theirs SOCKET -work DIR [-quick] [-json FILE]")
	os.Exit(2)
}

func serve(root, socket string) error {
	sn, err := overlay.NewSnapshotter(root, overlay.AsynchronousRemove)
	if err != nil {
		return fmt.Errorf("open containerd's overlay snapshotter at %s: %w", root, err)
	}
	os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", socket, err)
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		rpc.GracefulStop()
	}()
	err = rpc.Serve(l)
	sn.Close()
	return err
}

// sizes of the workloads; -quick shrinks them.
type sizes struct {
	chain, meta, list, files, reps int
}

type system struct {
	name string
	sn   snapshots.Snapshotter
	work string
}

// figures of one round: metric name -> seconds.
type figures map[string]float64

type workload struct {
	name    string
	primary string // the metric the ratio and the geomean use
	setup   func(ctx context.Context, s *system, z sizes) error
	round   func(ctx context.Context, s *system, z sizes, r int) (figures, error)
}

func dial(socket string) (snapshots.Snapshotter, error) {
	conn, err := grpc.Dial("unix://"+socket,
		grpc.WithInsecure(),
		grpc.WithBlock(), grpc.WithTimeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", socket, err)
	}
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "bench"), nil
}

func compare(args []string) error {
	fs := flag.NewFlagSet("compare", flag.ExitOnError)
	ours := fs.String("ours", "", "socket of the snapshotter measured (A)")
	theirs := fs.String("theirs", "", "socket of the snapshotter compared with (B)")
	work := fs.String("work", "", "directory for mount points, on the filesystem the snapshotters use")
	quick := fs.Bool("quick", false, "small sizes and two rounds")
	jsonOut := fs.String("json", "", "also write the figures as JSON to this file")
	only := fs.String("only", "", "comma-separated workloads to run (default: all)")
	fs.Parse(args)
	if *ours == "" || *theirs == "" || *work == "" {
		usage()
	}
	ctx := context.Background()
	z := sizes{chain: 100, meta: 2000, list: 5000, files: 20000, reps: 5}
	rounds := []int{0, 1, 1, 0}
	if *quick {
		z = sizes{chain: 20, meta: 200, list: 500, files: 2000, reps: 3}
		rounds = []int{0, 1}
	}
	var systems [2]*system
	for i, sock := range []string{*ours, *theirs} {
		sn, err := dial(sock)
		if err != nil {
			return err
		}
		name := []string{"ours", "containerd"}[i]
		dir := filepath.Join(*work, name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		systems[i] = &system{name: name, sn: sn, work: dir}
	}
	want := map[string]bool{}
	for _, w := range strings.Split(*only, ",") {
		if w != "" {
			want[w] = true
		}
	}
	type row struct {
		Workload string               `json:"workload"`
		Metric   string               `json:"metric"`
		Ours     float64              `json:"ours_seconds"`
		Theirs   float64              `json:"containerd_seconds"`
		Ratio    float64              `json:"ratio"`
		Primary  bool                 `json:"primary"`
		Rounds   map[string][]float64 `json:"rounds"`
	}
	var rows []row
	fmt.Printf("%-8s %-22s %14s %14s %7s\n", "workload", "metric", "ours", "containerd", "ratio")
	logProduct, n := 0.0, 0
	for _, w := range workloads() {
		if len(want) > 0 && !want[w.name] {
			continue
		}
		for _, s := range systems {
			if w.setup != nil {
				fmt.Fprintf(os.Stderr, "%s: setting up on %s\n", w.name, s.name)
				if err := w.setup(ctx, s, z); err != nil {
					return fmt.Errorf("%s: setup on %s: %w", w.name, s.name, err)
				}
			}
		}
		samples := [2]map[string][]float64{{}, {}}
		for r, i := range rounds {
			s := systems[i]
			fmt.Fprintf(os.Stderr, "%s: round %d on %s\n", w.name, r+1, s.name)
			f, err := w.round(ctx, s, z, r)
			if err != nil {
				return fmt.Errorf("%s: round %d on %s: %w", w.name, r+1, s.name, err)
			}
			if err := cleanup(ctx, s); err != nil {
				return fmt.Errorf("%s: cleanup on %s: %w", w.name, s.name, err)
			}
			for k, v := range f {
				samples[i][k] = append(samples[i][k], v)
			}
		}
		var metrics []string
		for k := range samples[0] {
			metrics = append(metrics, k)
		}
		sort.Slice(metrics, func(a, b int) bool {
			if (metrics[a] == w.primary) != (metrics[b] == w.primary) {
				return metrics[a] == w.primary
			}
			return metrics[a] < metrics[b]
		})
		for _, m := range metrics {
			a, b := median(samples[0][m]), median(samples[1][m])
			ratio := a / b
			mark := ""
			if m == w.primary {
				logProduct += math.Log(ratio)
				n++
				mark = " *"
			}
			fmt.Printf("%-8s %-22s %14s %14s %7.2f%s\n", w.name, m, human(a), human(b), ratio, mark)
			rows = append(rows, row{Workload: w.name, Metric: m, Ours: a, Theirs: b, Ratio: ratio,
				Primary: m == w.primary,
				Rounds:  map[string][]float64{"ours": samples[0][m], "containerd": samples[1][m]}})
		}
	}
	geomean := math.Exp(logProduct / float64(n))
	fmt.Printf("geomean of the %d starred ratios: %.2f\n", n, geomean)
	if *jsonOut != "" {
		out := map[string]interface{}{"rows": rows, "geomean": geomean, "quick": *quick,
			"date": time.Now().UTC().Format(time.RFC3339)}
		data, _ := json.MarshalIndent(out, "", "  ")
		if err := os.WriteFile(*jsonOut, append(data, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// cleanup runs the snapshotter's Cleanup (containerd's proxy client implements
// snapshots.Cleaner).
func cleanup(ctx context.Context, s *system) error {
	c, ok := s.sn.(snapshots.Cleaner)
	if !ok {
		return fmt.Errorf("the proxy client for %s has no Cleanup", s.name)
	}
	return c.Cleanup(ctx)
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return math.NaN()
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianDur(v []time.Duration) float64 {
	f := make([]float64, len(v))
	for i, d := range v {
		f[i] = d.Seconds()
	}
	return median(f)
}

func human(s float64) string {
	switch {
	case s < 1e-3:
		return fmt.Sprintf("%.1f us", s*1e6)
	case s < 1:
		return fmt.Sprintf("%.3f ms", s*1e3)
	default:
		return fmt.Sprintf("%.3f s", s)
	}
}

func workloads() []workload {
	return []workload{
		{name: "chain", primary: "layer", round: chainRound},
		{name: "meta", primary: "prepare+stat+remove", round: metaRound},
		{name: "list", primary: "list all", setup: listSetup, round: listRound},
		{name: "mounts", primary: "mounts depth 100", setup: mountsSetup, round: mountsRound},
		{name: "remove", primary: "remove+cleanup", round: removeRound},
		{name: "usage", primary: "usage", setup: usageSetup, round: usageRound},
	}
}

// withMounted mounts what a Prepare returned, runs f on the mount point, and unmounts.
func withMounted(s *system, mounts []mount.Mount, f func(dir string) error) error {
	dir, err := os.MkdirTemp(s.work, "mnt-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	if err := mount.All(mounts, dir); err != nil {
		return fmt.Errorf("mount %v: %w", mounts, err)
	}
	ferr := f(dir)
	if err := mount.UnmountAll(dir, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return ferr
}

func writeFiles(dir string, n, size int) error {
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i)
	}
	for i := 0; i < n; i++ {
		sub := dir
		if n > 1000 {
			sub = filepath.Join(dir, fmt.Sprintf("d%03d", i/1000))
			if i%1000 == 0 {
				if err := os.Mkdir(sub, 0o755); err != nil {
					return err
				}
			}
		}
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%05d", i)), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// buildChain makes n committed layers prefix-0..n-1, each holding 10 files, and returns the
// per-layer timings.
func buildChain(ctx context.Context, s *system, prefix string, n int) (layer, prep, commit []time.Duration, err error) {
	parent := ""
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("%s-active-%d", prefix, i)
		name := fmt.Sprintf("%s-%d", prefix, i)
		t0 := time.Now()
		mounts, err := s.sn.Prepare(ctx, key, parent)
		if err != nil {
			return nil, nil, nil, err
		}
		t1 := time.Now()
		if err := withMounted(s, mounts, func(dir string) error { return writeFiles(dir, 10, 4096) }); err != nil {
			return nil, nil, nil, err
		}
		t2 := time.Now()
		if err := s.sn.Commit(ctx, name, key); err != nil {
			return nil, nil, nil, err
		}
		t3 := time.Now()
		layer = append(layer, t3.Sub(t0))
		prep = append(prep, t1.Sub(t0))
		commit = append(commit, t3.Sub(t2))
		parent = name
	}
	return layer, prep, commit, nil
}

func removeChain(ctx context.Context, s *system, prefix string, n int) error {
	for i := n - 1; i >= 0; i-- {
		if err := s.sn.Remove(ctx, fmt.Sprintf("%s-%d", prefix, i)); err != nil {
			return err
		}
	}
	return nil
}

func chainRound(ctx context.Context, s *system, z sizes, r int) (figures, error) {
	prefix := fmt.Sprintf("chain-r%d", r)
	layer, prep, commit, err := buildChain(ctx, s, prefix, z.chain)
	if err != nil {
		return nil, err
	}
	if err := removeChain(ctx, s, prefix, z.chain); err != nil {
		return nil, err
	}
	return figures{"layer": medianDur(layer), "prepare": medianDur(prep), "commit": medianDur(commit)}, nil
}

func metaRound(ctx context.Context, s *system, z sizes, r int) (figures, error) {
	var all, prep, stat, rm []time.Duration
	for i := 0; i < z.meta; i++ {
		key := fmt.Sprintf("meta-r%d-%d", r, i)
		t0 := time.Now()
		if _, err := s.sn.Prepare(ctx, key, ""); err != nil {
			return nil, err
		}
		t1 := time.Now()
		if _, err := s.sn.Stat(ctx, key); err != nil {
			return nil, err
		}
		t2 := time.Now()
		if err := s.sn.Remove(ctx, key); err != nil {
			return nil, err
		}
		t3 := time.Now()
		all = append(all, t3.Sub(t0))
		prep = append(prep, t1.Sub(t0))
		stat = append(stat, t2.Sub(t1))
		rm = append(rm, t3.Sub(t2))
	}
	return figures{"prepare+stat+remove": medianDur(all), "prepare": medianDur(prep),
		"stat": medianDur(stat), "remove": medianDur(rm)}, nil
}

// listSetup commits z.list snapshots with two labels each; one in a hundred also carries
// bench.filter=yes.
func listSetup(ctx context.Context, s *system, z sizes) error {
	for i := 0; i < z.list; i++ {
		key := fmt.Sprintf("list-active-%d", i)
		labels := map[string]string{"bench.index": fmt.Sprint(i), "containerd.io/snapshot.ref": fmt.Sprintf("sha256:%064d", i)}
		if i%100 == 0 {
			labels["bench.filter"] = "yes"
		}
		if _, err := s.sn.Prepare(ctx, key, ""); err != nil {
			return err
		}
		if err := s.sn.Commit(ctx, fmt.Sprintf("list-%d", i), key, snapshots.WithLabels(labels)); err != nil {
			return err
		}
	}
	return nil
}

func listRound(ctx context.Context, s *system, z sizes, r int) (figures, error) {
	var all, filtered []time.Duration
	for rep := 0; rep < z.reps; rep++ {
		for _, f := range []string{"", `labels."bench.filter"==yes`} {
			n := 0
			t0 := time.Now()
			var filters []string
			if f != "" {
				filters = []string{f}
			}
			if err := s.sn.Walk(ctx, func(context.Context, snapshots.Info) error { n++; return nil }, filters...); err != nil {
				return nil, err
			}
			d := time.Since(t0)
			want := z.list
			if f != "" {
				want = (z.list + 99) / 100
				filtered = append(filtered, d)
			} else {
				all = append(all, d)
			}
			if n < want {
				return nil, fmt.Errorf("walk with filter %q saw %d snapshots, want at least %d", f, n, want)
			}
		}
	}
	return figures{"list all": medianDur(all), "list 1% filter": medianDur(filtered)}, nil
}

func mountsSetup(ctx context.Context, s *system, z sizes) error {
	if _, _, _, err := buildChain(ctx, s, "mounts", 100); err != nil {
		return err
	}
	if _, err := s.sn.Prepare(ctx, "mounts-top", "mounts-99"); err != nil {
		return err
	}
	_, err := s.sn.Prepare(ctx, "mounts-base", "mounts-0")
	return err
}

func mountsRound(ctx context.Context, s *system, z sizes, r int) (figures, error) {
	out := figures{}
	for _, c := range []struct{ key, metric string }{{"mounts-top", "mounts depth 100"}, {"mounts-base", "mounts depth 1"}} {
		var d []time.Duration
		for i := 0; i < z.meta/4; i++ {
			t0 := time.Now()
			m, err := s.sn.Mounts(ctx, c.key)
			if err != nil {
				return nil, err
			}
			d = append(d, time.Since(t0))
			if len(m) != 1 {
				return nil, fmt.Errorf("mounts of %s: %d mounts", c.key, len(m))
			}
		}
		out[c.metric] = medianDur(d)
	}
	return out, nil
}

// filled prepares key and writes n small files into it.
func filled(ctx context.Context, s *system, key string, n int) error {
	mounts, err := s.sn.Prepare(ctx, key, "")
	if err != nil {
		return err
	}
	return withMounted(s, mounts, func(dir string) error { return writeFiles(dir, n, 64) })
}

func removeRound(ctx context.Context, s *system, z sizes, r int) (figures, error) {
	var both, rm []time.Duration
	for rep := 0; rep < 2; rep++ {
		key := fmt.Sprintf("remove-r%d-%d", r, rep)
		if err := filled(ctx, s, key, z.files); err != nil {
			return nil, err
		}
		syscall.Sync()
		t0 := time.Now()
		if err := s.sn.Remove(ctx, key); err != nil {
			return nil, err
		}
		t1 := time.Now()
		if err := cleanup(ctx, s); err != nil {
			return nil, err
		}
		t2 := time.Now()
		both = append(both, t2.Sub(t0))
		rm = append(rm, t1.Sub(t0))
	}
	return figures{"remove+cleanup": medianDur(both), "remove": medianDur(rm)}, nil
}

func usageSetup(ctx context.Context, s *system, z sizes) error {
	return filled(ctx, s, "usage", z.files)
}

func usageRound(ctx context.Context, s *system, z sizes, r int) (figures, error) {
	var d []time.Duration
	for rep := 0; rep < z.reps; rep++ {
		t0 := time.Now()
		u, err := s.sn.Usage(ctx, "usage")
		if err != nil {
			return nil, err
		}
		d = append(d, time.Since(t0))
		if u.Inodes < int64(z.files) {
			return nil, fmt.Errorf("usage counted %d inodes, want at least %d", u.Inodes, z.files)
		}
	}
	return figures{"usage": medianDur(d)}, nil
}
