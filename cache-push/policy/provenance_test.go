package policy

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
)

// isolationExternal is what a runner signs: the external parameters of a
// real Statement, read back the way the pusher reads them.
func isolationExternal(t *testing.T, w *attest.Workflow) attest.ExternalParameters {
	t.Helper()
	b := &attest.Build{
		DrvPath: "/nix/store/g5s1vk624lv2dj6jhzgdvygm842l9hiv-x.drv", System: "x86_64-linux", BuilderID: "r",
		Installable: attest.Installable{Kind: "drv"}, Workflow: w, StartedOn: time.Now(),
		Outputs: []attest.Output{{Name: "out", Path: "/nix/store/a5s1vk624lv2dj6jhzgdvygm842l9hiv-x", NarSize: 1}},
	}
	st, err := attest.NewStatement(b)
	if err != nil {
		t.Fatal(err)
	}
	p, err := attest.ParseProvenance(st)
	if err != nil {
		t.Fatal(err)
	}
	return p.External
}

func TestRequireIsolation(t *testing.T) {
	if _, err := Parse([]byte("tenants: [a]\nsystems: [x]\nrequire_isolation: [uid, vm]\nbuilders:\n  - {id: x, key: k.pub}\n"), t.TempDir()); err == nil {
		t.Fatal("an unknown isolation name was accepted")
	}
	dir := t.TempDir()
	if _, err := attest.GenerateKeyFiles(filepath.Join(dir, "k")); err != nil {
		t.Fatal(err)
	}
	p, err := Parse([]byte("tenants: [a]\nsystems: [x]\nrequire_isolation: [uid, cgroup]\nbuilders:\n  - {id: x, key: k.pub}\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	job := func(iso ...string) *attest.Workflow {
		return &attest.Workflow{Server: "http://f", Repository: "a/b", Capture: "step", Isolation: iso}
	}
	for _, tc := range []struct {
		name string
		ext  attest.ExternalParameters
		ok   bool
	}{
		{"isolated", isolationExternal(t, job("uid", "cgroup")), true},
		{"older runner", isolationExternal(t, job()), false},
		{"shared user", isolationExternal(t, job("cgroup")), false},
		{"no forge job", isolationExternal(t, nil), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := p.CheckIsolation(tc.ext)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v", err)
			}
			if err != nil && !errors.Is(err, ErrIsolationMissing) || err != nil && !errors.Is(err, ErrDenied) {
				t.Fatalf("err %v is not ErrIsolationMissing/ErrDenied", err)
			}
		})
	}
	// Without the rule, nothing changes for older provenance.
	p.RequireIsolation = nil
	if err := p.CheckIsolation(isolationExternal(t, job())); err != nil {
		t.Fatal(err)
	}
}

func TestCheckSource(t *testing.T) {
	dir := t.TempDir()
	if _, err := attest.GenerateKeyFiles(filepath.Join(dir, "k")); err != nil {
		t.Fatal(err)
	}
	p, err := Parse([]byte("tenants: [a, b]\nsystems: [x86_64-linux]\nsources: [\"distro/*\", \"https://codeberg.org/distro/*\"]\noverrides:\n  - tenants: [b]\n    quorum: {min: 3}\nbuilders:\n  - {id: x, key: k.pub}\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		ext  attest.ExternalParameters
		ok   bool
	}{
		{"runner job", attest.ExternalParameters{Workflow: &attest.Workflow{Server: "http://forge", Repository: "distro/pkgs"}}, true},
		{"checkout", attest.ExternalParameters{Source: &attest.Source{Repository: "https://codeberg.org/distro/pkgs"}}, true},
		{"other repo", attest.ExternalParameters{Workflow: &attest.Workflow{Repository: "mallory/pkgs"}}, false},
		{"no repo", attest.ExternalParameters{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := p.CheckSource(tc.ext)
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrSourceNotAllowed)) {
				t.Fatalf("err = %v", err)
			}
		})
	}
	if q := p.QuorumFor("b", "x86_64-linux", "/nix/store/x-y"); q.Min != 3 {
		t.Errorf("tenant override: min %d", q.Min)
	}
	if q := p.QuorumFor("a", "x86_64-linux", "/nix/store/x-y"); q.Min != 1 {
		t.Errorf("default: min %d", q.Min)
	}
}
