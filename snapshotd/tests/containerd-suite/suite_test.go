// containerd's own snapshotter conformance suite (snapshots/testsuite, containerd 1.6)
// against `snapshotd --namespaced`, driven through containerd's proxy snapshotter client:
// each case starts a daemon on its own root (native backend) and talks to it in the
// suite's namespace ("testsuite"), which the client sends in the containerd-namespace
// header. The suite labels what it makes with containerd.io/gc.root, so the daemon's
// background collections must leave it alone.
//
// Run by snapshotd/tests/containerd_suite.rs (`go test` in GOPATH mode with Debian's
// golang-github-containerd-containerd-dev); SNAPSHOTD names the daemon's binary.
package suite

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

func newSnapshotter(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	bin := os.Getenv("SNAPSHOTD")
	if bin == "" {
		return nil, nil, fmt.Errorf("SNAPSHOTD must name the snapshotd binary")
	}
	dir := filepath.Dir(root)
	socket := filepath.Join(dir, "sd.sock")
	config := filepath.Join(dir, "sd.toml")
	if err := os.WriteFile(config, []byte("log_level = \"warn\"\n"), 0o644); err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(bin, "--namespaced", "--backend", "native",
		"--root", filepath.Join(root, "sd"), "--address", socket, "--config", config)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			return fmt.Errorf("snapshotd did not stop within 30s")
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(socket); err == nil {
			break
		}
		if time.Now().After(deadline) {
			_ = stop()
			return nil, nil, fmt.Errorf("snapshotd made no socket at %s", socket)
		}
		time.Sleep(10 * time.Millisecond)
	}
	conn, err := grpc.Dial("unix://"+socket, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithTimeout(10*time.Second))
	if err != nil {
		_ = stop()
		return nil, nil, err
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "snapshotd")
	return sn, func() error {
		_ = conn.Close()
		return stop()
	}, nil
}

func TestContainerdSuiteThroughNamespacedSnapshotd(t *testing.T) {
	testsuite.SnapshotterSuite(t, "snapshotd", newSnapshotter)
}
