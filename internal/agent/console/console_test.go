package console

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/driver/fake"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, string(b)
}

// The console answer is the log's tail, as much as asked for (within the
// bound), and a VM without a log is a clear 404 naming the host.
func TestConsoleTail(t *testing.T) {
	drv := fake.New()
	drv.ConsoleDir = t.TempDir()
	log := strings.Repeat("x", 100) + "the end\n"
	if err := os.WriteFile(filepath.Join(drv.ConsoleDir, "web.log"), []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	h := Handler("h1", drv)
	if code, body := get(t, h, "/v1/vms/web/console"); code != 200 || body != log {
		t.Fatalf("whole log: %d %q", code, body)
	}
	if code, body := get(t, h, "/v1/vms/web/console?bytes=8"); code != 200 || body != "the end\n" {
		t.Fatalf("tail of 8 bytes: %d %q", code, body)
	}
	if code, body := get(t, h, "/v1/vms/nope/console"); code != 404 || !strings.Contains(body, "nope on h1") {
		t.Fatalf("missing log: %d %q", code, body)
	}
	if code, body := get(t, h, "/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("healthz: %d %q", code, body)
	}
}

// noConsole is a driver without the optional Console interface.
type noConsole struct{ driver.Driver }

func TestDriverWithoutConsole(t *testing.T) {
	if code, _ := get(t, Handler("h1", noConsole{}), "/v1/vms/web/console"); code != http.StatusNotImplemented {
		t.Fatalf("code %d, want 501", code)
	}
}
