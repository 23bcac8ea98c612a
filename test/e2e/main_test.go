package e2e

import (
	"os"
	"testing"

	"github.com/vigilha/vigil/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.Sweep()
	os.Exit(m.Run())
}
