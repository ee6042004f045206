// Package fuzzseed writes and reads the seed corpora that fuzz tests keep
// in testdata/fuzz/<FuzzName>/, in Go's `go test fuzz v1` format, so that a
// plain `go test` (and so CI) runs every committed seed.
//
// Seeds derived from test fixtures are rewritten by a package's
// TestFuzzCorpus when UpdateEnv is set:
//
//	PROVENIX_UPDATE_SEEDS=1 go test -run TestFuzzCorpus ./pkg/
package fuzzseed

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// UpdateEnv, set to 1, makes Update true.
const UpdateEnv = "PROVENIX_UPDATE_SEEDS"

// Update reports whether committed seeds should be rewritten.
func Update() bool { return os.Getenv(UpdateEnv) == "1" }

const header = "go test fuzz v1\n"

// Path is where the seed name of fuzz target fuzz lives, relative to the
// package directory (a test's working directory).
func Path(fuzz, name string) string { return filepath.Join("testdata", "fuzz", fuzz, name) }

// Write stores one seed of a fuzz target taking a single []byte, or a
// single string when asString is set.
func Write(t testing.TB, fuzz, name string, data []byte, asString bool) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(Path(fuzz, name)), 0o755); err != nil {
		t.Fatal(err)
	}
	body := "[]byte(" + strconv.Quote(string(data)) + ")"
	if asString {
		body = "string(" + strconv.Quote(string(data)) + ")"
	}
	if err := os.WriteFile(Path(fuzz, name), []byte(header+body+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Read returns one committed single-value seed ([]byte or string).
func Read(t testing.TB, fuzz, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(Path(fuzz, name))
	if err != nil {
		t.Fatalf("%v (rewrite the seeds with %s=1 go test -run TestFuzzCorpus)", err, UpdateEnv)
	}
	body, ok := bytes.CutPrefix(raw, []byte(header))
	if !ok {
		t.Fatalf("%s: no %q header", Path(fuzz, name), header)
	}
	body = bytes.TrimSpace(body)
	for _, typ := range []string{"[]byte(", "string("} {
		if inner, ok := bytes.CutPrefix(body, []byte(typ)); ok {
			if inner, ok = bytes.CutSuffix(inner, []byte(")")); ok {
				s, err := strconv.Unquote(string(inner))
				if err != nil {
					t.Fatalf("%s: %v", Path(fuzz, name), err)
				}
				return []byte(s)
			}
		}
	}
	t.Fatalf("%s: not a single []byte or string value", Path(fuzz, name))
	return nil
}

// Sync writes seeds when Update is true, then checks each is committed
// with the same content, so a fixture change that orphans the corpus
// fails instead of silently fuzzing stale inputs.
func Sync(t testing.TB, fuzz string, seeds map[string][]byte, asString bool) {
	t.Helper()
	for name, want := range seeds {
		if Update() {
			Write(t, fuzz, name, want, asString)
		}
		if got := Read(t, fuzz, name); !bytes.Equal(got, want) {
			t.Errorf("%s is stale; rewrite it with %s=1 go test -run TestFuzzCorpus", Path(fuzz, name), UpdateEnv)
		}
	}
}
