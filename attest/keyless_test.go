package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"google.golang.org/protobuf/encoding/protojson"
)

const (
	forgeIssuer = "https://forge.example/api/actions"
	forgeSAN    = "https://forge.example/distro/pkgs/.forgejo/workflows/build.yml@refs/heads/main"
)

// TestKeylessIdentity signs with sigstore-go's VirtualSigstore (Fulcio CA,
// Rekor and CT logs in memory) and checks the identity policy.
func TestKeylessIdentity(t *testing.T) {
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	out := Output{Name: "out", Path: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello", NarHash: sha256.Sum256([]byte("nar")), NarSize: 3}
	build := func(builder string) []byte {
		st, err := NewStatement(&Build{DrvPath: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello.drv", System: "x86_64-linux",
			BuilderID: builder, Installable: Installable{Kind: "drv", Ref: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello.drv"}, Outputs: []Output{out}})
		if err != nil {
			t.Fatal(err)
		}
		b, err := protojson.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	want := []Subject{{Path: out.Path, NarHash: out.NarHash}}
	newVerifier := func(ids ...TrustedIdentity) *Verifier {
		t.Helper()
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		v, err := NewVerifier(vs, WithKeys(TrustedBuilder{ID: "key-builder", PublicKey: k.Public()}), WithIdentities(ids...))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	exact := TrustedIdentity{ID: "forge:distro/pkgs", Issuer: forgeIssuer, SAN: forgeSAN}
	pattern := TrustedIdentity{ID: "forge:distro/pkgs", Issuer: forgeIssuer, SANRegexp: `^https://forge\.example/distro/pkgs/\.forgejo/workflows/.*@refs/heads/main$`}
	unanchored := TrustedIdentity{ID: "forge:distro/pkgs", IssuerRegexp: `https://forge\.example/api/actions`, SANRegexp: `https://forge\.example/distro/pkgs/.*`}

	for _, tc := range []struct {
		name            string
		san, issuer, id string
		trust           TrustedIdentity
		wantErr         error
	}{
		{"exact identity", forgeSAN, forgeIssuer, "forge:distro/pkgs", exact, nil},
		{"regexp identity", forgeSAN, forgeIssuer, "forge:distro/pkgs", pattern, nil},
		{"wrong issuer", forgeSAN, "https://evil.example/api/actions", "forge:distro/pkgs", exact, ErrUnknownSigner},
		{"wrong SAN", "https://forge.example/mallory/pkgs/.forgejo/workflows/build.yml@refs/heads/main", forgeIssuer, "forge:distro/pkgs", pattern, ErrUnknownSigner},
		{"identity claims another builder", forgeSAN, forgeIssuer, "someone-else", exact, ErrUntrustedBuilder},
		// Patterns match the whole string, whether or not they say ^ and $
		// (issue 11, finding 4): a prefix of the SAN or a substring of the
		// issuer is not the identity.
		{"unanchored SAN pattern, longer repository", "https://forge.example/distro/pkgs-evil/.forgejo/workflows/build.yml@refs/heads/main", forgeIssuer, "forge:distro/pkgs", unanchored, ErrUnknownSigner},
		{"unanchored SAN pattern, inside a query", "https://evil.example/x?https://forge.example/distro/pkgs/", forgeIssuer, "forge:distro/pkgs", unanchored, ErrUnknownSigner},
		{"unanchored issuer pattern, inside another URL", forgeSAN, "https://evil.example/?https://forge.example/api/actions", "forge:distro/pkgs", unanchored, ErrUnknownSigner},
		{"unanchored pattern, the identity itself", "https://forge.example/distro/pkgs/.forgejo/workflows/build.yml@refs/heads/main", forgeIssuer, "forge:distro/pkgs", unanchored, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := vs.Attest(tc.san, tc.issuer, build(tc.id))
			if err != nil {
				t.Fatal(err)
			}
			got, err := newVerifier(tc.trust).VerifyEntity(e, want)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("verify: %v", err)
				}
				if got.Builder.ID != "forge:distro/pkgs" {
					t.Fatalf("builder %q", got.Builder.ID)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || !errors.Is(err, ErrVerification) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
		})
	}

	// Each bundle is checked against the identities of the builder it
	// claims: a broad identity listed first for builder A does not capture
	// builder B's bundles (before, the first match won, and B's honest
	// bundle was refused as "claims builder B, signer trusted for A").
	broadA := TrustedIdentity{ID: "builder-a", Issuer: forgeIssuer, SANRegexp: `https://forge\.example/.*`}
	exactB := TrustedIdentity{ID: "builder-b", Issuer: forgeIssuer, SAN: forgeSAN}
	e, err := vs.Attest(forgeSAN, forgeIssuer, build("builder-b"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := newVerifier(broadA, exactB).VerifyEntity(e, want); err != nil || got.Builder.ID != "builder-b" {
		t.Fatalf("builder B's bundle with A's broad identity listed first: %+v, %v", got, err)
	}
	// And B's certificate cannot sign as A when A's identity does not
	// cover it.
	if _, err := newVerifier(TrustedIdentity{ID: "builder-a", Issuer: forgeIssuer, SAN: "https://forge.example/a"}, exactB).VerifyEntity(mustAttest(t, vs, forgeSAN, build("builder-a")), want); !errors.Is(err, ErrUnknownSigner) {
		t.Fatalf("B's certificate claiming builder A: %v", err)
	}
	if _, err := newVerifier(exactB).VerifyEntity(mustAttest(t, vs, forgeSAN, build("builder-c")), want); !errors.Is(err, ErrUntrustedBuilder) {
		t.Fatalf("a bundle claiming a builder with no identity: %v", err)
	}

	// The artifact must still match: a right identity over another NAR fails.
	e, err = vs.Attest(forgeSAN, forgeIssuer, build("forge:distro/pkgs"))
	if err != nil {
		t.Fatal(err)
	}
	other := []Subject{{Path: out.Path, NarHash: sha256.Sum256([]byte("other"))}}
	if _, err := newVerifier(exact).VerifyEntity(e, other); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("digest mismatch: %v", err)
	}
}

func mustAttest(t *testing.T, vs *ca.VirtualSigstore, san string, payload []byte) *ca.TestEntity {
	t.Helper()
	e, err := vs.Attest(san, forgeIssuer, payload)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// BenchmarkVerifyKeyless is BenchmarkVerify for a keyless (Fulcio)
// entity: certificate chain, transparency log entry and identity, and
// the claimed provenance read before the signature is checked.
func BenchmarkVerifyKeyless(b *testing.B) {
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		b.Fatal(err)
	}
	const builder = "forge:distro/pkgs"
	payload := statementPayload(b, builder)
	e, err := vs.Attest(forgeSAN, forgeIssuer, payload)
	if err != nil {
		b.Fatal(err)
	}
	v, err := NewVerifier(vs, WithIdentities(TrustedIdentity{ID: builder, Issuer: forgeIssuer, SAN: forgeSAN}))
	if err != nil {
		b.Fatal(err)
	}
	want := []Subject{{Path: testOut, NarHash: sha256.Sum256([]byte("nar"))}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.VerifyEntity(e, want); err != nil {
			b.Fatal(err)
		}
	}
}
