package attest

import (
	"strings"
	"testing"

	intoto "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// TestPredicateDepth: splitStatement accepts a predicate nested as deep
// as Envelope.Statement (protojson reading it into a Struct) does, and no
// deeper, whether the deep value is an object, an array or a scalar:
// protojson's typed reader would skip a deeper unknown value that the
// Struct refuses.
func TestPredicateDepth(t *testing.T) {
	for _, depth := range []int{maxPredicateDepth - 1, maxPredicateDepth, maxPredicateDepth + 1, maxPredicateDepth + 2} {
		for _, kind := range []struct{ open, inner, close string }{
			{`{"a":`, `1`, `}`},
			{`[`, `"s"`, `]`},
			{`{"a":`, `{}`, `}`},
			{`[`, `[]`, `]`},
		} {
			// The predicate's member "x" is at depth 1; inner at depth.
			payload := `{"predicate":{"x":` + strings.Repeat(kind.open, depth-1) + kind.inner + strings.Repeat(kind.close, depth-1) + `}}`
			var st intoto.Statement
			werr := protojson.Unmarshal([]byte(payload), &st)
			_, _, err := splitStatement([]byte(payload))
			if (err == nil) != (werr == nil) {
				t.Errorf("%s at depth %d: splitStatement: %v; Envelope.Statement's protojson: %v", kind.inner, depth, err, werr)
			}
		}
	}
}
