package tests

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestLibraryImportsNoTooling holds the direction of the module: the
// library's packages may use the leaves directly under internal/, never
// the measuring tools (internal/bench/...) nor an example.
func TestLibraryImportsNoTooling(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not in PATH")
	}
	library := []string{"lro", "lroendpoint", "fdbased", "rxbatch", "framed"}
	for _, pkg := range library {
		t.Run(pkg, func(t *testing.T) {
			out, err := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}}",
				"github.com/netlro/netlro/"+pkg).CombinedOutput()
			require.NoError(t, err, "%s", out)
			for dep := range strings.FieldsSeq(string(out)) {
				require.False(t, strings.HasPrefix(dep, "github.com/netlro/netlro/internal/bench"),
					"%s imports the measuring tool %s", pkg, dep)
				require.False(t, strings.HasPrefix(dep, "github.com/netlro/netlro/examples"),
					"%s imports the example %s", pkg, dep)
			}
		})
	}
}
