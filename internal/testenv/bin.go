// Package testenv gives integration tests and benchmarks real Vigil
// processes: the built binary, the guest image, and a single-host `vigil
// up` with its own data directory, ports and VM network namespace, cleaned
// up (processes, QEMUs, namespace) even when the test fails.
package testenv

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// DefaultImageDir is where `vigil image build` puts images by default.
const DefaultImageDir = "/var/lib/vigil/images"

// builds holds one build per set of build tags, per test process.
var builds struct {
	sync.Mutex
	done map[string]*build
}

type build struct {
	once sync.Once
	path string
	err  error
}

// Binary returns the vigil binary: $VIGIL_BIN, or a fresh build of
// ./cmd/vigil (once per test process).
func Binary(t testing.TB) string {
	t.Helper()
	return binary(t, "VIGIL_BIN", "", "./cmd/vigil")
}

// FaultsBinary returns a vigil binary built with the `faults` tag, which
// adds fault-injection flags the product does not have (internal/cli
// faults_on.go): $VIGIL_FAULTS_BIN, or a fresh build.
func FaultsBinary(t testing.TB) string {
	t.Helper()
	return binary(t, "VIGIL_FAULTS_BIN", "faults", "./cmd/vigil")
}

// EtcdBinary returns an etcd server at the version Vigil is built
// against, for tests of an external etcd: $VIGIL_ETCD_BIN, or a fresh
// build of ./test/tools/etcd.
func EtcdBinary(t testing.TB) string {
	t.Helper()
	return binary(t, "VIGIL_ETCD_BIN", "", "./test/tools/etcd")
}

func binary(t testing.TB, env, tags, pkg string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return p
	}
	builds.Lock()
	if builds.done == nil {
		builds.done = map[string]*build{}
	}
	key := tags + " " + pkg
	b := builds.done[key]
	if b == nil {
		b = &build{}
		builds.done[key] = b
	}
	builds.Unlock()
	b.once.Do(func() { b.path, b.err = goBuild(tags, pkg) })
	if b.err != nil {
		t.Fatalf("build %s: %v", pkg, b.err)
	}
	return b.path
}

func goBuild(tags, pkg string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "vigil-test-bin-")
	if err != nil {
		return "", err
	}
	// The agent runs each QEMU through this binary (`vigil jail`) as the
	// unprivileged QEMU user, who must be able to reach it.
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-tags", tags, "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -tags %q %s: %v: %s", tags, pkg, err, b)
	}
	return out, nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the Vigil module")
	}
	return filepath.Dir(gomod), nil
}

var imageOnce struct {
	sync.Once
	err error
}

// ImageDir returns the directory of guest images, building the vigil-guest
// image first if it is missing ($VIGIL_IMAGE_DIR overrides the location).
func ImageDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("VIGIL_IMAGE_DIR")
	if dir == "" {
		dir = DefaultImageDir
	}
	imageOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(dir, "vigil-guest", "manifest.json")); err == nil {
			return
		}
		cmd := exec.Command(Binary(t), "image", "build", "--image-dir", dir)
		if root, err := moduleRoot(); err == nil {
			cmd.Dir = root
		}
		if b, err := cmd.CombinedOutput(); err != nil {
			imageOnce.err = fmt.Errorf("vigil image build: %v: %s", err, b)
		}
	})
	if imageOnce.err != nil {
		t.Fatalf("guest image: %v", imageOnce.err)
	}
	return dir
}

// RequireRoot skips nothing: Vigil's integration tests need root for
// namespaces, taps and QEMU, and a run without it is a setup error.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("integration tests need root (namespaces, bridges, taps); run scripts/test.sh as root")
	}
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
