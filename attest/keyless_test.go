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
		v, err := NewVerifier([]TrustedBuilder{{ID: "key-builder", PublicKey: k.Public()}})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.WithIdentities(vs, ids, false); err != nil {
			t.Fatal(err)
		}
		return v
	}
	exact := TrustedIdentity{ID: "forge:distro/pkgs", Issuer: forgeIssuer, SAN: forgeSAN}
	pattern := TrustedIdentity{ID: "forge:distro/pkgs", Issuer: forgeIssuer, SANRegexp: `^https://forge\.example/distro/pkgs/\.forgejo/workflows/.*@refs/heads/main$`}

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

	// The artifact must still match: a right identity over another NAR fails.
	e, err := vs.Attest(forgeSAN, forgeIssuer, build("forge:distro/pkgs"))
	if err != nil {
		t.Fatal(err)
	}
	other := []Subject{{Path: out.Path, NarHash: sha256.Sum256([]byte("other"))}}
	if _, err := newVerifier(exact).VerifyEntity(e, other); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("digest mismatch: %v", err)
	}
}
