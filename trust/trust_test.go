package trust_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/internal/testcache"
	"codeberg.org/provenix/provenix/trust"
)

func TestParseKeyAndIdentity(t *testing.T) {
	if k := trust.ParseKey("b.pub", "local"); k != (trust.KeyFile{BuilderID: "local", Path: "b.pub"}) {
		t.Errorf("FILE: %+v", k)
	}
	if k := trust.ParseKey("ci=keys/ci.pub", "local"); k != (trust.KeyFile{BuilderID: "ci", Path: "keys/ci.pub"}) {
		t.Errorf("ID=FILE: %+v", k)
	}
	id, err := trust.ParseIdentity("forge:x=https://forge.example/api/actions,~https://forge\\.example/x/.*")
	if err != nil {
		t.Fatal(err)
	}
	if id.ID != "forge:x" || id.Issuer != "https://forge.example/api/actions" || id.SAN != "" || id.SANRegexp != `https://forge\.example/x/.*` {
		t.Errorf("identity %+v", id)
	}
	id, err = trust.ParseIdentity("b=~https://.*,alice@example.org")
	if err != nil || id.IssuerRegexp != "https://.*" || id.Issuer != "" || id.SAN != "alice@example.org" {
		t.Errorf("identity %+v, %v", id, err)
	}
	for _, bad := range []string{"b", "b=issuer", "=i,s", "b=,s", "b=i,"} {
		if _, err := trust.ParseIdentity(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// keyFile writes a new builder key pair into dir and returns the public
// key's file and a signer.
func keyFile(t *testing.T, dir, name string) (string, *attest.Signer) {
	t.Helper()
	s, err := attest.GenerateKeyFiles(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, name+".pub"), s
}

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	a, _ := keyFile(t, dir, "a")
	keyfileB, _ := keyFile(t, dir, "b")
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte("tenants: [default]\nsystems: [x86_64-linux]\nquorum: {min: 2, distinct: owner}\nbuilders:\n"+
		"  - {id: a, key: a.pub, owner: alice}\n  - {id: b, key: b.pub, owner: alice}\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	tr, err := trust.Open(trust.Options{Keys: []trust.KeyFile{{BuilderID: "a", Path: a}}, DefaultPolicy: pol})
	if err != nil {
		t.Fatal(err)
	}
	if tr.Verifier == nil || tr.Policy != nil || tr.Distinct() != nil {
		t.Fatalf("keys given: %+v", tr)
	}

	// Nothing given: the default policy, which counts owners.
	tr, err = trust.Open(trust.Options{DefaultPolicy: pol, Tenant: "default"})
	if err != nil {
		t.Fatal(err)
	}
	if tr.Policy == nil || tr.Distinct() == nil {
		t.Fatalf("default policy not used: %+v", tr)
	}
	d := tr.Distinct()
	sp := "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x"
	if d("a", "x86_64-linux", sp) != d("b", "x86_64-linux", sp) {
		t.Errorf("two builders of one owner count as two: %q, %q", d("a", "x86_64-linux", sp), d("b", "x86_64-linux", sp))
	}
	if o := tr.VerifyOptions(2); o.Verifier != tr.Verifier || o.Quorum != 2 || o.Distinct == nil {
		t.Errorf("verify options %+v", o)
	}

	for _, tc := range []struct {
		name string
		o    trust.Options
		want string
	}{
		{"nothing and no default policy", trust.Options{}, "no trusted builders"},
		{"default policy missing", trust.Options{DefaultPolicy: filepath.Join(dir, "none.yaml")}, "no trusted builders"},
		{"policy and keys", trust.Options{Policy: pol, Keys: []trust.KeyFile{{BuilderID: "a", Path: a}}}, "not both"},
		{"policy and identities", trust.Options{Policy: pol, Identities: []attest.TrustedIdentity{{ID: "x", Issuer: "i", SAN: "s"}}}, "not both"},
		{"unreadable key", trust.Options{Keys: []trust.KeyFile{{BuilderID: "a", Path: filepath.Join(dir, "nope.pub")}}}, "--key"},
		{"identity without a trusted root", trust.Options{Identities: []attest.TrustedIdentity{{ID: "x", Issuer: "i", SAN: "s"}}}, "--identity needs --trusted-root"},
		{"log without a trusted root", trust.Options{Keys: []trust.KeyFile{{BuilderID: "a", Path: a}}, RequireTlog: true}, "--require-tlog needs --trusted-root"},
		{"unreadable trusted root", trust.Options{Keys: []trust.KeyFile{{BuilderID: "a", Path: a}}, RequireTlog: true, TrustedRoot: filepath.Join(dir, "nope.json")}, "--trusted-root"},
		{"policy tightened to a log it does not name", trust.Options{Policy: pol, RequireTlog: true}, "require_tlog"},
		{"one key for two builders", trust.Options{Keys: []trust.KeyFile{{BuilderID: "a", Path: keyfileB}, {BuilderID: "b", Path: keyfileB}}}, "share a key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := trust.Open(tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open: %+v, %v; want an error saying %q", tr, err, tc.want)
			}
		})
	}
	if _, err := trust.Open(trust.Options{}); !errors.Is(err, trust.ErrNoTrust) {
		t.Errorf("no trust: %v", err)
	}
}

// TestVerifyCacheEntry: the action's verification, against a real cache
// (the project's cache server over a directory): a NAR attested by the
// trusted key verifies, the same with another key does not, and a path the
// cache lacks is an error, not a verdict.
func TestVerifyCacheEntry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	srv := testcache.Serve(t)
	pub, signer := keyFile(t, dir, "builder")
	other, _ := keyFile(t, dir, "other")
	sp := srv.PublishAttested(t, ctx, "hello", "ci", signer)

	entry := trust.CacheEntry{CacheURL: srv.URL, StorePath: sp, Key: trust.KeyFile{BuilderID: "ci", Path: pub}}
	rep, err := trust.VerifyCacheEntry(ctx, entry)
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	rep.WriteText(&text)
	if !rep.Verified || rep.Quorum != 1 || len(rep.Attestations) != 1 || rep.Attestations[0].Builder != "ci" ||
		!strings.Contains(text.String(), "(hello.nix -A hello)") {
		t.Fatalf("trusted key: %+v\n%s", rep, text.String())
	}

	entry.Key.Path = other
	if rep, err = trust.VerifyCacheEntry(ctx, entry); err != nil || rep.Verified {
		t.Fatalf("another key: %+v, %v", rep, err)
	}
	entry.Key.BuilderID = "someone-else"
	entry.Key.Path = pub
	if rep, err = trust.VerifyCacheEntry(ctx, entry); err != nil || rep.Verified {
		t.Fatalf("the key trusted for another builder id: %+v, %v", rep, err)
	}

	entry.Key.BuilderID = "ci"
	entry.StorePath = "/nix/store/" + nixbase32.EncodeToString(make([]byte, 20)) + "-absent"
	if _, err := trust.VerifyCacheEntry(ctx, entry); !errors.Is(err, cacheclient.ErrNotFound) {
		t.Fatalf("absent path: %v", err)
	}
}
