package lro

import (
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestStatsOrder: the Stats fields, the counter constants and the list
// Stats.pointers returns name the same counters in the same order, so that
// counter c lands in its own field. Each constant's name, without its
// "c", ends the name of its field (cIn is PacketsIn, cFlushBatch is
// FlushBatch).
func TestStatsOrder(t *testing.T) {
	var s Stats
	v := reflect.ValueOf(&s).Elem()
	require.Equal(t, int(numCounters), v.NumField(), "one Stats field per counter")
	for i, p := range s.pointers() {
		f := v.Type().Field(i)
		require.Equal(t, reflect.Uint64, f.Type.Kind(), f.Name)
		assert.Same(t, v.Field(i).Addr().Interface(), p, "pointers()[%d] is &%s", i, f.Name)
	}

	names := counterNames(t)
	require.Len(t, names, int(numCounters))
	for i, name := range names {
		field := v.Type().Field(i).Name
		assert.True(t, strings.HasSuffix(field, strings.TrimPrefix(name, "c")),
			"counter %d is %s, field %d is %s", i, name, i, field)
	}
}

// counterNames returns the names of the counter constants in stats.go, in
// order, up to numCounters.
func counterNames(t *testing.T) []string {
	f, err := parser.ParseFile(token.NewFileSet(), "stats.go", nil, 0)
	require.NoError(t, err)
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST || len(g.Specs) == 0 {
			continue
		}
		if first := g.Specs[0].(*ast.ValueSpec); first.Type == nil || first.Type.(*ast.Ident).Name != "counter" {
			continue
		}
		var names []string
		for _, spec := range g.Specs {
			for _, n := range spec.(*ast.ValueSpec).Names {
				if n.Name == "numCounters" {
					return names
				}
				names = append(names, n.Name)
			}
		}
	}
	t.Fatal("no counter constants in stats.go")
	return nil
}
