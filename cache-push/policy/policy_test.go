package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"google.golang.org/protobuf/encoding/protojson"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/internal/fuzzseed"
	"codeberg.org/provenix/provenix/queue"
)

func writeKey(t *testing.T, dir string) string {
	t.Helper()
	k, err := attest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := attest.MarshalPublicKey(k.Public())
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keys", "builder.pub"), pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return string(pub)
}

func TestExampleLoads(t *testing.T) {
	dir := t.TempDir()
	writeKey(t, dir)
	path := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(path, []byte(Example), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Verifier(); err != nil {
		t.Fatal(err)
	}
	ok := &queue.Result{Tenant: "default", System: "x86_64-linux", Builder: "local"}
	if err := p.Check(ok); err != nil {
		t.Fatalf("Check(allowed) = %v", err)
	}
	for _, tc := range []struct {
		name string
		r    queue.Result
		want error
	}{
		{"other tenant", queue.Result{Tenant: "other", System: "x86_64-linux", Builder: "local"}, ErrTenantNotAllowed},
		{"other system", queue.Result{Tenant: "default", System: "riscv64-linux", Builder: "local"}, ErrSystemNotAllowed},
		{"unknown builder", queue.Result{Tenant: "default", System: "x86_64-linux", Builder: "mallory"}, ErrBuilderNotTrusted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := p.Check(&tc.r); !errors.Is(err, tc.want) || !errors.Is(err, ErrDenied) {
				t.Fatalf("Check = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	dir := t.TempDir()
	pem := writeKey(t, dir)
	inline := "builders:\n  - id: a\n    key: |\n" + indent(pem, "      ")
	if _, err := Parse([]byte(inline), dir); err != nil {
		t.Fatalf("inline key: %v", err)
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"no builders", "systems: [x86_64-linux]\n", "no builders"},
		{"unknown field", "builderz: []\n", "field builderz not found"},
		{"missing key file", "builders:\n  - id: a\n    key: nope.pub\n", "no such file"},
		{"not a key", "builders:\n  - id: a\n    key: \"-----BEGIN X-----\"\n", "PUBLIC KEY"},
		{"shared key", "builders:\n  - {id: a, key: keys/builder.pub}\n  - {id: b, key: keys/builder.pub}\n", "share a key"},
		{"duplicate id", "builders:\n  - {id: a, key: keys/builder.pub}\n  - {id: a, key: keys/builder.pub}\n", "twice"},
		{"empty id", "builders:\n  - {key: keys/builder.pub}\n", "no id"},
		{"bad tenant", "tenants: [a.b]\nbuilders:\n  - {id: a, key: keys/builder.pub}\n", "forbidden character"},
		{"not yaml", "{{{", "parse"},
		{"closure typo", "closure: {timout: 1h}\nbuilders:\n  - {id: a, key: keys/builder.pub}\n", "field timout not found"},
		{"closure negative", "closure: {timeout: -1h}\nbuilders:\n  - {id: a, key: keys/builder.pub}\n", "negative timeout"},
		{"upstream no keys", "upstreams: [{url: \"http://u.example\"}]\nbuilders:\n  - {id: a, key: keys/builder.pub}\n", "no public_keys"},
		{"upstream bad url", "upstreams: [{url: \"ftp://u.example\", public_keys: [\"u-1:" + testNixPub + "\"]}]\nbuilders:\n  - {id: a, key: keys/builder.pub}\n", "want http(s)"},
		{"upstream bad key", "upstreams: [{url: \"http://u.example\", public_keys: [\"u-1\"]}]\nbuilders:\n  - {id: a, key: keys/builder.pub}\n", "public key"},
		{"upstream typo", "upstreams: [{url: \"http://u.example\", public_key: [\"u-1:" + testNixPub + "\"]}]\nbuilders:\n  - {id: a, key: keys/builder.pub}\n", "field public_key not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

// testNixPub is a Nix public key's base64 (32 bytes).
const testNixPub = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s="

func TestClosureAndUpstreams(t *testing.T) {
	dir := t.TempDir()
	writeKey(t, dir)
	p, err := Parse([]byte("builders:\n  - {id: a, key: keys/builder.pub}\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	if p.Closure.Timeout != DefaultClosureTimeout || len(p.Upstreams) != 0 {
		t.Fatalf("defaults: %+v %+v", p.Closure, p.Upstreams)
	}
	p, err = Parse([]byte("closure: {timeout: 90s}\nupstreams:\n  - url: https://up.example/c\n    public_keys: [\"up-1:"+testNixPub+"\"]\nbuilders:\n  - {id: a, key: keys/builder.pub}\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	if p.Closure.Timeout.Seconds() != 90 || len(p.Upstreams) != 1 || p.Upstreams[0].URL != "https://up.example/c" || len(p.Upstreams[0].PublicKeys) != 1 {
		t.Fatalf("parsed: %+v %+v", p.Closure, p.Upstreams)
	}
}

func indent(s, pre string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString(pre + l + "\n")
	}
	return b.String()
}

// policySeeds are policies, good and bad, committed as FuzzPolicy's corpus.
func policySeeds() map[string][]byte {
	return map[string][]byte{
		"example":      []byte(Example),
		"minimal":      []byte("builders:\n  - {id: a, key: keys/builder.pub}\n"),
		"quorum-owner": []byte("tenants: [a, b]\nsystems: [x86_64-linux]\nquorum: {min: 2, distinct: owner, on_disagreement: trusted-only, trusted: a}\nbuilders:\n  - {id: a, key: keys/builder.pub, owner: o1, host: h1}\n  - {id: b, key: keys/other.pub, owner: o2}\n"),
		"overrides": []byte("overrides:\n  - names: [\"*-firefox-*\", \"[\"]\n    quorum: {min: 3}\n  - systems: [aarch64-linux]\n    tenants: [t]\n    quorum: {trusted_after: 5, spot_check: 0.1}\n" +
			"reputation: {quarantine_after: 2, window: 24h}\nsources: [\"distro/*\"]\nbuilders:\n  - {id: a, key: keys/builder.pub}\n"),
		"keyless":      []byte("trusted_root: root.json\nrequire_sct: true\nbuilders:\n  - id: forge:x\n    identity: {issuer: \"https://f/api/actions\", san_regexp: \"^https://f/x/.*$\"}\n"),
		"nix-key":      []byte("builders:\n  - {id: a, key: keys/builder.pub, nix_key: \"a-1:ZmFrZXNpZ25hdHVyZWZha2VzaWduYXR1cmVmYWtlcw==\"}\n"),
		"closure":      []byte("closure: {timeout: 2h}\nupstreams: [{url: \"https://u.example\", public_keys: [\"u-1:ZmFrZXNpZ25hdHVyZWZha2VzaWduYXR1cmVmYWtlcw==\"]}]\nbuilders:\n  - {id: a, key: keys/builder.pub}\n"),
		"require-tlog": []byte("require_tlog: true\nbuilders:\n  - {id: a, key: keys/builder.pub}\n"),
		"anchors":      []byte("a: &a [x]\nb: &b [*a, *a]\nbuilders: *b\n"),
		"not-yaml":     []byte("{{{"),
	}
}

func TestFuzzCorpus(t *testing.T) {
	fuzzseed.Sync(t, "FuzzPolicy", policySeeds(), false)
}

// FuzzPolicy parses hostile policy files next to a real key file. Parse
// must not panic; a policy it accepts must hold the invariants the pusher
// relies on (every quorum rule filled in and consistent, a verifier for
// key-only policies) and answer every query without panicking.
//
// Its seeds are the committed testdata/fuzz/FuzzPolicy/ (policySeeds).
func FuzzPolicy(f *testing.F) {
	dir := f.TempDir()
	k, err := attest.GenerateKey()
	if err != nil {
		f.Fatal(err)
	}
	pub, _ := attest.MarshalPublicKey(k.Public())
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o755); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keys", "builder.pub"), pub, 0o644); err != nil {
		f.Fatal(err)
	}
	k2, err := attest.GenerateKey()
	if err != nil {
		f.Fatal(err)
	}
	pub2, _ := attest.MarshalPublicKey(k2.Public())
	if err := os.WriteFile(filepath.Join(dir, "keys", "other.pub"), pub2, 0o644); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b, dir)
		if err != nil {
			return
		}
		if len(p.Builders) == 0 {
			t.Fatal("accepted a policy without builders")
		}
		keyless := false
		for i, bd := range p.Builders {
			if bd.ID == "" {
				t.Fatalf("builders[%d] accepted without an id", i)
			}
			if got, ok := p.Builder(bd.ID); !ok || got.ID != bd.ID {
				t.Fatalf("builder %q not found by id", bd.ID)
			}
			if bd.Identity != nil {
				keyless = true
			} else if p.keys[bd.ID] == nil {
				t.Fatalf("builder %q accepted without a key", bd.ID)
			}
			_ = p.DistinctKey(bd.ID, DistinctOwner)
			_, _ = p.NixKey(bd.ID)
		}
		quorums := append([]Quorum{p.Quorum}, overrideQuorums(p.Overrides)...)
		for _, q := range quorums {
			if q.Min < 1 || q.TrustedAfter < 0 || q.SpotCheck < 0 || q.SpotCheck > 1 {
				t.Fatalf("accepted quorum %+v", q)
			}
			if err := q.check(nil); err != nil || q.Distinct == "" || q.OnDisagreement == "" {
				t.Fatalf("quorum %+v not filled in: %v", q, err)
			}
			if q.OnDisagreement == OnDisagreementTrustedOnly {
				if _, ok := p.Builder(q.Trusted); !ok {
					t.Fatalf("trusted-only quorum names unknown builder %q", q.Trusted)
				}
			}
		}
		if p.Reputation.QuarantineAfter < 1 || p.Reputation.Window <= 0 {
			t.Fatalf("accepted reputation %+v", p.Reputation)
		}
		_, verr := p.Verifier()
		if !keyless && !p.RequireTlog && verr != nil {
			t.Fatalf("key-only policy has no verifier: %v", verr)
		}
		_ = p.QuorumFor("default", "x86_64-linux", "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-firefox-1")
		_ = p.CheckSource(attest.ExternalParameters{Workflow: &attest.Workflow{Server: "http://f", Repository: "distro/pkgs"}})
		_ = p.Check(&queue.Result{Tenant: "default", System: "x86_64-linux", Builder: p.Builders[0].ID})
	})
}

// TestKeylessBuilder: a builder given as a certificate identity verifies
// keyless bundles (sigstore-go's VirtualSigstore as the private Sigstore);
// another workflow's identity does not.
func TestKeylessBuilder(t *testing.T) {
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse([]byte(`tenants: [a]
systems: [x86_64-linux]
builders:
  - id: forge:distro/pkgs
    identity:
      issuer: https://forge.example/api/actions
      san_regexp: '^https://forge\.example/distro/pkgs/\.forgejo/workflows/[^@]+@refs/tags/v.*$'
`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Verifier(); err == nil || !strings.Contains(err.Error(), "trusted_root") {
		t.Fatalf("keyless builder without a trusted root: %v", err)
	}
	v, err := p.VerifierWith(vs)
	if err != nil {
		t.Fatal(err)
	}
	out := attest.Output{Name: "out", Path: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello", NarHash: [32]byte{1}, NarSize: 100}
	st, err := attest.NewStatement(&attest.Build{DrvPath: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello.drv", System: "x86_64-linux",
		BuilderID: "forge:distro/pkgs", Outputs: []attest.Output{out}})
	if err != nil {
		t.Fatal(err)
	}
	payload, err := protojson.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	want := []attest.Subject{{Path: out.Path, NarHash: out.NarHash}}
	good, err := vs.Attest("https://forge.example/distro/pkgs/.forgejo/workflows/release.yml@refs/tags/v1.2", "https://forge.example/api/actions", payload)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.VerifyEntity(good, want); err != nil {
		t.Fatalf("trusted workflow identity: %v", err)
	}
	branch, err := vs.Attest("https://forge.example/distro/pkgs/.forgejo/workflows/release.yml@refs/heads/main", "https://forge.example/api/actions", payload)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.VerifyEntity(branch, want); !errors.Is(err, attest.ErrUnknownSigner) {
		t.Fatalf("a branch build's identity: %v", err)
	}
}
