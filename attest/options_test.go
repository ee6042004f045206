package attest

import (
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
)

// noLogs is trusted material without transparency logs.
type noLogs struct{ root.TrustedMaterial }

func (noLogs) RekorLogs() map[string]*root.TransparencyLog { return nil }

// TestNewVerifierOptions: options that lack what they need or contradict
// each other are refused together, with ErrVerifierOptions, whatever their
// order; sound combinations build.
func TestNewVerifierOptions(t *testing.T) {
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	k, _ := newKey(t)
	key := TrustedBuilder{ID: "b", PublicKey: k.Public()}
	id := TrustedIdentity{ID: "forge:distro/pkgs", Issuer: forgeIssuer, SAN: forgeSAN}
	for _, tc := range []struct {
		name    string
		trusted root.TrustedMaterial
		opts    []VerifierOption
		ok      bool
	}{
		{"keys only", nil, []VerifierOption{WithKeys(key)}, true},
		{"nothing trusted", nil, nil, true},
		{"keys, identities, SCTs and a log", vs, []VerifierOption{WithRequiredTlog(), WithSignedCertificateTimestamps(), WithIdentities(id), WithKeys(key)}, true},
		{"identities only", vs, []VerifierOption{WithIdentities(id)}, true},
		{"one identity, several issuers", vs, []VerifierOption{WithIdentities(id, TrustedIdentity{ID: id.ID, Issuer: "https://other.example", SAN: forgeSAN})}, true},
		{"an identity shared by two builders", vs, []VerifierOption{WithIdentities(id, TrustedIdentity{ID: "other", Issuer: forgeIssuer, SAN: forgeSAN})}, false},
		{"log required without keys", vs, []VerifierOption{WithIdentities(id), WithRequiredTlog()}, true},
		{"identities without a trusted root", nil, []VerifierOption{WithKeys(key), WithIdentities(id)}, false},
		{"identities option without identities", vs, []VerifierOption{WithKeys(key), WithIdentities()}, false},
		{"SCTs without identities", vs, []VerifierOption{WithKeys(key), WithSignedCertificateTimestamps()}, false},
		{"log required without a trusted root", nil, []VerifierOption{WithKeys(key), WithRequiredTlog()}, false},
		{"log required, trusted root without logs", noLogs{vs}, []VerifierOption{WithKeys(key), WithRequiredTlog()}, false},
		{"identity without a builder id", vs, []VerifierOption{WithIdentities(TrustedIdentity{Issuer: forgeIssuer, SAN: forgeSAN})}, false},
		{"identity with a broken pattern", vs, []VerifierOption{WithIdentities(TrustedIdentity{ID: "x", Issuer: forgeIssuer, SANRegexp: "("})}, false},
		{"builder without an id", nil, []VerifierOption{WithKeys(TrustedBuilder{PublicKey: k.Public()})}, false},
		{"builder without a key", nil, []VerifierOption{WithKeys(TrustedBuilder{ID: "b"})}, false},
		{"two builders, one key", nil, []VerifierOption{WithKeys(key), WithKeys(TrustedBuilder{ID: "c", PublicKey: k.Public()})}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := NewVerifier(tc.trusted, tc.opts...)
			if tc.ok != (err == nil) || tc.ok != (v != nil) {
				t.Fatalf("NewVerifier: %v, %v", v, err)
			}
			if !tc.ok && !errors.Is(err, ErrVerifierOptions) {
				t.Fatalf("err %v is not ErrVerifierOptions", err)
			}
		})
	}
}

// TestNewVerifierOptionOrder: a required log applies to the keys whatever
// the order the options come in; no option is lost to being given early.
func TestNewVerifierOptionOrder(t *testing.T) {
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	const builder = "https://builders.example/order"
	k, s := newKey(t)
	unlogged := signBuild(t, testBuild(builder), s, nil)
	want := []Subject{{Path: testOut, NarHash: sha256.Sum256([]byte("nar"))}}
	key := WithKeys(TrustedBuilder{ID: builder, PublicKey: k.Public()})
	for name, opts := range map[string][]VerifierOption{
		"log first":  {WithRequiredTlog(), key},
		"keys first": {key, WithRequiredTlog()},
	} {
		v, err := NewVerifier(vs, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(unlogged, want); !errors.Is(err, ErrTransparencyLog) {
			t.Errorf("%s: a bundle without a log entry: %v, want ErrTransparencyLog", name, err)
		}
	}
	plain, err := NewVerifier(vs, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Verify(unlogged, want); err != nil {
		t.Fatalf("without WithRequiredTlog the key alone verifies: %v", err)
	}
}
