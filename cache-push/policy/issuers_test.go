package policy

import (
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/internal/testfulcio"
	"codeberg.org/provenix/provenix/internal/testrekor"
	"codeberg.org/provenix/provenix/internal/testtsa"
)

// TestKeylessIssuers: a tenant's policy trusts builders through two OIDC
// issuers of one private Fulcio (a real one, with a real Rekor v2 log and
// timestamp authority). Each identity is accepted for its own builder ids
// only: a certificate from issuer Y, even for the very same subject, or
// one matching another builder's subject pattern, cannot claim a builder
// id granted to issuer X.
func TestKeylessIssuers(t *testing.T) {
	log := testrekor.Start(t)
	ca := testfulcio.StartIssuers(t, 2)
	tsa := testtsa.Start(t)
	x, y := ca.Issuers[0], ca.Issuers[1]
	dir := t.TempDir()
	rootJSON, err := ca.TrustedRoot(t, log.TrustedRoot.RekorLogs(), tsa.Authority).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "root.json"), rootJSON, 0o644); err != nil {
		t.Fatal(err)
	}
	pol, err := Parse([]byte(`tenants: [default]
systems: [x86_64-linux]
trusted_root: root.json
builders:
  - id: forge-x
    identity: {issuer: "`+x+`", san: builder@x.test}
  - id: forge-y
    identity: {issuer: "`+y+`", san_regexp: '.*@y\.test'}
  - id: both
    identities:
      - {issuer: "`+x+`", san: both@provenix.test}
      - {issuer: "`+y+`", san: both@provenix.test}
`), dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := pol.Verifier()
	if err != nil {
		t.Fatal(err)
	}
	out := "/nix/store/9ri7p1kdl1d1vavgmc3mq0rkdkmvcl0f-hello"
	nar := sha256.Sum256([]byte("nar"))
	want := []attest.Subject{{Path: out, NarHash: nar}}
	// sign has issuer i's token for email sign provenance claiming builder.
	sign := func(t *testing.T, builder string, i int, email string) []byte {
		t.Helper()
		drv := "/nix/store/1ad7bmqh6ykl1xbq8nyv9j8s6c0vy5rg-hello.drv"
		st, err := attest.NewStatement(&attest.Build{DrvPath: drv, System: "x86_64-linux", BuilderID: builder,
			Installable: attest.Installable{Kind: "drv", Ref: drv},
			Outputs:     []attest.Output{{Name: "out", Path: out, NarHash: nar, NarSize: 3}}})
		if err != nil {
			t.Fatal(err)
		}
		b, err := attest.SignKeyless(t.Context(), st, attest.KeylessOptions{FulcioURL: ca.URL, RekorURL: log.URL, TSAURL: tsa.URL,
			IDToken: ca.TokenFrom(t, i, email)})
		if err != nil {
			t.Fatalf("SignKeyless: %v", err)
		}
		return b
	}
	for _, tc := range []struct {
		name    string
		builder string
		issuer  int
		email   string
		ok      bool
	}{
		{"x for its own id", "forge-x", 0, "builder@x.test", true},
		{"y for its own id", "forge-y", 1, "anyone@y.test", true},
		{"both through x", "both", 0, "both@provenix.test", true},
		{"both through y", "both", 1, "both@provenix.test", true},
		{"y claims x's id with x's subject", "forge-x", 1, "builder@x.test", false},
		{"x claims y's id with a subject y's pattern matches", "forge-y", 0, "mallory@y.test", false},
		{"a shared identity claims a one-issuer id", "forge-x", 0, "both@provenix.test", false},
		{"y's builder claims the shared id", "both", 1, "anyone@y.test", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := v.Verify(sign(t, tc.builder, tc.issuer, tc.email), want)
			if tc.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if got.Builder.ID != tc.builder {
					t.Fatalf("verified as %q, want %q", got.Builder.ID, tc.builder)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted as %q", got.Builder.ID)
			}
			if !errors.Is(err, attest.ErrUnknownSigner) {
				t.Fatalf("err = %v, want %v", err, attest.ErrUnknownSigner)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// TestIdentityParse: identities are checked like identity, and one
// identity may not speak for two builder ids.
func TestIdentityParse(t *testing.T) {
	for name, tc := range map[string]struct{ yaml, err string }{
		"shared identity": {`builders:
  - {id: a, identity: {issuer: "https://i.example", san: e@x}}
  - {id: b, identities: [{issuer: "https://i.example", san: e@x}]}
`, "share the identity"},
		"both forms": {`builders:
  - {id: a, identity: {issuer: "https://i.example", san: e@x}, identities: [{issuer: "https://j.example", san: e@x}]}
`, "identity or identities"},
		"incomplete": {`builders:
  - {id: a, identities: [{issuer: "https://i.example", san: e@x}, {issuer: "https://j.example"}]}
`, "needs one of"},
	} {
		_, err := Parse([]byte("trusted_root: nope.json\n"+tc.yaml), t.TempDir())
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.err)
		}
	}
}
