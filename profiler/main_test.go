package profiler

import (
	"testing"

	"github.com/cgscope/cgscope/internal/kerneltest"
)

func TestMain(m *testing.M) { kerneltest.Main(m) }
