package attest

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	intoto "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// statementJSON is st as the JSON a DSSE payload carries, for editing.
// statementPayload is the Statement Sign would write for a test build by
// builder, as JSON: the payload a signature covers.
func statementPayload(tb testing.TB, builder string) []byte {
	tb.Helper()
	st, err := NewStatement(testBuild(builder))
	if err != nil {
		tb.Fatal(err)
	}
	payload, err := protojson.Marshal(st)
	if err != nil {
		tb.Fatal(err)
	}
	return payload
}

func statementJSON(t *testing.T, st *intoto.Statement) map[string]any {
	t.Helper()
	raw, err := protojson.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func externalOf(m map[string]any) map[string]any {
	return m["predicate"].(map[string]any)["buildDefinition"].(map[string]any)["externalParameters"].(map[string]any)
}

func statementFrom(t *testing.T, m map[string]any) *intoto.Statement {
	t.Helper()
	raw, _ := json.Marshal(m)
	var st intoto.Statement
	if err := protojson.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

// TestProvenanceRoundTrip: what NewStatement writes from typed fields,
// ParseProvenance reads back into the same types, and the JSON keys are the
// ones docs/buildtype-nix-v1.md names (absent when empty, never "").
func TestProvenanceRoundTrip(t *testing.T) {
	b := testBuild("https://builders.example/rt")
	b.Workflow = &Workflow{Server: "https://forge.example", Repository: "distro/pkgs", Ref: "refs/heads/main", Sha: "abc",
		Workflow: "build.yml", Job: "build", RunID: "7", Event: "push", Actor: "alice", Capture: "step",
		Isolation: []string{IsolationUID, IsolationCgroup}}
	b.Substituters = []string{"https://cache.example"}
	st, err := NewStatement(b)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseProvenance(st)
	if err != nil {
		t.Fatal(err)
	}
	want := ExternalParameters{Derivation: b.DrvPath, System: b.System, Installable: b.Installable, Source: b.Source, Workflow: b.Workflow}
	if !reflect.DeepEqual(p.External, want) {
		t.Fatalf("external parameters read back as\n%+v\nwrote\n%+v", p.External, want)
	}
	if wantInt := (InternalParameters{NixVersion: "2.8.0", Sandbox: "true", Substituters: b.Substituters}); !reflect.DeepEqual(p.Internal, wantInt) {
		t.Fatalf("internal parameters %+v, want %+v", p.Internal, wantInt)
	}
	if p.DrvPath != b.DrvPath || p.System != b.System || p.BuilderID != b.BuilderID || p.BuilderVersion != b.BuilderVersion ||
		p.InvocationID != b.InvocationID || !p.StartedOn.Equal(b.StartedOn) || !p.FinishedOn.Equal(b.FinishedOn) {
		t.Fatalf("read %s %s %s %s %s %s %s", p.DrvPath, p.System, p.BuilderID, p.BuilderVersion, p.InvocationID, p.StartedOn, p.FinishedOn)
	}
	ext := externalOf(statementJSON(t, st))
	w := ext["workflow"].(map[string]any)
	if w["runId"] != "7" || w["capture"] != "step" || !reflect.DeepEqual(w["isolation"], []any{"uid", "cgroup"}) {
		t.Fatalf("workflow written as %v", w)
	}
	if _, ok := ext["source"].(map[string]any)["ref"]; ok {
		t.Fatalf("empty source ref written: %v", ext["source"])
	}

	// Optional parts left empty are absent, and read back as absent.
	b = testBuild("https://builders.example/rt")
	b.Installable, b.Source, b.Workflow = Installable{}, &Source{}, &Workflow{Isolation: []string{}}
	b.NixVersion, b.Sandbox = "", ""
	st, err = NewStatement(b)
	if err != nil {
		t.Fatal(err)
	}
	m := statementJSON(t, st)
	for _, k := range []string{"installable", "source", "workflow"} {
		if v, ok := externalOf(m)[k]; ok {
			t.Errorf("empty %s written as %v", k, v)
		}
	}
	if ip, ok := m["predicate"].(map[string]any)["buildDefinition"].(map[string]any)["internalParameters"]; ok && len(ip.(map[string]any)) > 0 {
		t.Errorf("empty internal parameters written as %v", ip)
	}
	if p, err = ParseProvenance(st); err != nil {
		t.Fatal(err)
	}
	if p.External.Source != nil || p.External.Workflow != nil || p.External.Installable != (Installable{}) {
		t.Fatalf("absent parts read as %+v", p.External)
	}
}

// TestProvenanceUnknownAndMalformed: fields this version does not know
// are ignored (a newer builder may record more), known fields of the
// wrong type make the Statement malformed, as does a missing derivation.
func TestProvenanceUnknownAndMalformed(t *testing.T) {
	st, err := NewStatement(testBuild("https://builders.example/m"))
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(ext map[string]any)) *intoto.Statement {
		m := statementJSON(t, st)
		f(externalOf(m))
		return statementFrom(t, m)
	}

	unknown := edit(func(ext map[string]any) {
		ext["futureField"] = map[string]any{"x": 1.0}
		ext["source"].(map[string]any)["signedBy"] = "someone"
	})
	p, err := ParseProvenance(unknown)
	if err != nil {
		t.Fatalf("unknown fields: %v", err)
	}
	if p.External.Source == nil || p.External.Source.Repository != "https://codeberg.org/provenix/provenix" {
		t.Fatalf("known fields beside unknown ones read as %+v", p.External.Source)
	}

	for name, f := range map[string]func(ext map[string]any){
		"installable not an object": func(ext map[string]any) { ext["installable"] = "hello.nix" },
		"isolation not a list":      func(ext map[string]any) { ext["workflow"] = map[string]any{"isolation": "uid"} },
		"repository a number":       func(ext map[string]any) { ext["source"] = map[string]any{"repository": 3.0} },
		"no derivation":             func(ext map[string]any) { delete(ext, "derivation") },
		"derivation a number":       func(ext map[string]any) { ext["derivation"] = 1.0 },
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseProvenance(edit(f)); !errors.Is(err, ErrMalformedBundle) {
				t.Fatalf("err = %v, want ErrMalformedBundle", err)
			}
		})
	}
}

func TestInstallableString(t *testing.T) {
	for _, tc := range []struct {
		in   Installable
		want string
	}{
		{Installable{Kind: "file", File: "hello.nix", Attr: "hello"}, "hello.nix -A hello"},
		{Installable{Kind: "drv", Ref: testDrv}, testDrv},
		{Installable{Kind: "flake", Ref: ".#hello"}, ".#hello"},
	} {
		if got := tc.in.String(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.in, got, tc.want)
		}
	}
}
