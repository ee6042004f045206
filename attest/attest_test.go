package attest

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	intoto "github.com/in-toto/attestation/go/v1"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"google.golang.org/protobuf/encoding/protojson"
)

var update = flag.Bool("update", false, "rewrite testdata/ golden files")

const (
	testDrv = "/nix/store/0c7a0m2yx2cys3q1hbm3m7r9g1qv0x3k-hello.drv"
	testOut = "/nix/store/9ri7p1kdl1d1vavgmc3mq0rkdkmvcl0f-hello"
	testDep = "/nix/store/1ad7bmqh6ykl1xbq8nyv9j8s6c0vy5rg-bb"
)

func testBuild(builderID string) *Build {
	return &Build{
		DrvPath:     testDrv,
		System:      "x86_64-linux",
		Installable: Installable{Kind: "file", File: "examples/hello.nix", Attr: "hello"},
		Source:      &Source{Repository: "https://codeberg.org/provenix/provenix", Revision: "abc123"},
		Outputs: []Output{{
			Name: "out", Path: testOut, NarHash: sha256.Sum256([]byte("nar")), NarSize: 1234,
			References: []string{testDep},
		}},
		Dependencies:   []Dependency{{Path: testDrv, NarHash: sha256.Sum256([]byte("drv"))}},
		NixVersion:     "2.8.0",
		Sandbox:        "true",
		BuilderID:      builderID,
		BuilderVersion: "test",
		InvocationID:   "test-run-1",
		StartedOn:      time.Unix(1700000000, 0),
		FinishedOn:     time.Unix(1700000001, 0),
	}
}

func newKey(t testing.TB) (*ecdsa.PrivateKey, *Signer) {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSigner(k)
	if err != nil {
		t.Fatal(err)
	}
	return k, s
}

// keyVerifier is a verifier that trusts one fresh key for builder, and the
// signer of that key.
func keyVerifier(t testing.TB, builder string) (*Verifier, *Signer) {
	t.Helper()
	k, s := newKey(t)
	v, err := NewVerifier(nil, WithKeys(TrustedBuilder{ID: builder, PublicKey: k.Public()}))
	if err != nil {
		t.Fatal(err)
	}
	return v, s
}

func signBuild(t testing.TB, b *Build, s *Signer, mutate func(m map[string]any)) []byte {
	t.Helper()
	st, err := NewStatement(b)
	if err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		raw, _ := protojson.Marshal(st)
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		mutate(m)
		raw, _ = json.Marshal(m)
		if err := protojson.Unmarshal(raw, st); err != nil {
			t.Fatal(err)
		}
	}
	bj, err := Sign(context.Background(), st, s)
	if err != nil {
		t.Fatal(err)
	}
	return bj
}

// alterPayload decodes the DSSE payload, applies f and re-encodes it,
// keeping the original signature: what an attacker on the wire can do.
func alterPayload(t *testing.T, bundleJSON []byte, f func(string) string) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(bundleJSON, &m); err != nil {
		t.Fatal(err)
	}
	env := m["dsseEnvelope"].(map[string]any)
	p, err := base64.StdEncoding.DecodeString(env["payload"].(string))
	if err != nil {
		t.Fatal(err)
	}
	np := f(string(p))
	if np == string(p) {
		t.Fatal("alteration changed nothing")
	}
	env["payload"] = base64.StdEncoding.EncodeToString([]byte(np))
	out, _ := json.Marshal(m)
	return out
}

func TestVerify(t *testing.T) {
	const builder = "https://builders.example/alice"
	v, s := keyVerifier(t, builder)
	_, other := newKey(t)
	good := signBuild(t, testBuild(builder), s, nil)
	want := []Subject{{Path: testOut, NarHash: sha256.Sum256([]byte("nar"))}}

	tests := []struct {
		name    string
		bundle  []byte
		want    []Subject
		wantErr error
	}{
		{"valid", good, want, nil},
		{"unknown signer", signBuild(t, testBuild(builder), other, nil), want, ErrUnknownSigner},
		{"payload altered after signing", alterPayload(t, good, func(p string) string {
			return strings.Replace(p, "x86_64-linux", "aarch64-linux", 1)
		}), want, ErrSignature},
		{"digest of artifact differs", good, []Subject{{Path: testOut, NarHash: sha256.Sum256([]byte("other"))}}, ErrDigestMismatch},
		{"subject name differs", good, []Subject{{Path: testDep, NarHash: want[0].NarHash}}, ErrSubjectMismatch},
		{"wrong predicate type", signBuild(t, testBuild(builder), s, func(m map[string]any) {
			m["predicateType"] = "https://slsa.dev/provenance/v0.2"
		}), want, ErrPredicateType},
		{"wrong build type", signBuild(t, testBuild(builder), s, func(m map[string]any) {
			m["predicate"].(map[string]any)["buildDefinition"].(map[string]any)["buildType"] = "https://example.com/other"
		}), want, ErrPredicateType},
		{"builder id not bound to key", signBuild(t, testBuild("https://builders.example/mallory"), s, nil), want, ErrUntrustedBuilder},
		{"not JSON", []byte("{not json"), want, ErrMalformedBundle},
		{"empty object", []byte("{}"), want, ErrMalformedBundle},
		{"oversize", make([]byte, MaxBundleSize+1), want, ErrMalformedBundle},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := v.Verify(tc.bundle, tc.want)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if got.BuilderID != builder || got.DrvPath != testDrv || got.System != "x86_64-linux" {
					t.Fatalf("provenance = %+v", got.Provenance)
				}
				if len(got.Outputs) != 1 || got.Outputs[0].NarSize != 1234 || got.Outputs[0].Name != "out" ||
					len(got.Outputs[0].References) != 1 || got.Outputs[0].References[0] != testDep {
					t.Fatalf("outputs = %+v", got.Outputs)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || !errors.Is(err, ErrVerification) {
				t.Fatalf("Verify error = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// TestVerifyArtifactCheck: sigstore-go checks only the signature
// (WithoutArtifactUnsafe); checkArtifacts makes its artifact check on our
// reading of the verified payload, before anything else the Statement
// says. Each bundle here is signed by the trusted key and refused as when
// sigstore-go checked the digests, never blamed on the builder as a
// malformed statement: a digest not there is ErrDigestMismatch as before;
// a Statement over sigstore-go's limits or with a digest that is not hex
// is ErrMalformedBundle (sigstore-go's refusal was reported as
// ErrSignature).
func TestVerifyArtifactCheck(t *testing.T) {
	const builder = "https://builders.example/alice"
	v, s := keyVerifier(t, builder)
	want := []Subject{{Path: testOut, NarHash: sha256.Sum256([]byte("nar"))}}
	other := []Subject{{Path: testOut, NarHash: sha256.Sum256([]byte("other"))}}
	noDrv := func(m map[string]any) {
		delete(m["predicate"].(map[string]any)["buildDefinition"].(map[string]any)["externalParameters"].(map[string]any), "derivation")
	}
	digests := func(f func(d map[string]any)) func(m map[string]any) {
		return func(m map[string]any) { f(m["subject"].([]any)[0].(map[string]any)["digest"].(map[string]any)) }
	}
	many := testBuild(builder)
	for i := range maxSubjects {
		many.Outputs = append(many.Outputs, Output{Name: fmt.Sprint("o", i), Path: fmt.Sprintf("%s-%d", testOut, i),
			NarHash: sha256.Sum256([]byte{byte(i)}), NarSize: 1})
	}
	for _, tc := range []struct {
		name    string
		bundle  []byte
		want    []Subject
		wantErr error
	}{
		{"digest differs, predicate malformed", signBuild(t, testBuild(builder), s, noDrv), other, ErrDigestMismatch},
		{"digest differs, another predicate type", signBuild(t, testBuild(builder), s, func(m map[string]any) {
			m["predicateType"] = "https://slsa.dev/provenance/v0.2"
		}), other, ErrDigestMismatch},
		{"digest differs, another builder's id", signBuild(t, testBuild("https://builders.example/mallory"), s, nil), other, ErrDigestMismatch},
		{"no subjects", signBuild(t, testBuild(builder), s, func(m map[string]any) { m["subject"] = []any{} }), want, ErrDigestMismatch},
		{"too many subjects", signBuild(t, many, s, nil), want, ErrMalformedBundle},
		{"too many digests", signBuild(t, testBuild(builder), s, digests(func(d map[string]any) {
			for i := range maxSubjectDigests {
				d[fmt.Sprint("alg", i)] = "00"
			}
		})), want, ErrMalformedBundle},
		{"a digest not hex", signBuild(t, testBuild(builder), s, digests(func(d map[string]any) { d["sha512"] = "not hex" })), want, ErrMalformedBundle},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.Verify(tc.bundle, tc.want)
			if !errors.Is(err, tc.wantErr) || !errors.Is(err, ErrVerification) {
				t.Fatalf("Verify error = %v, want %v", err, tc.wantErr)
			}
			var sm *SignedMalformedError
			if errors.As(err, &sm) {
				t.Fatalf("blamed on %s: %v", sm.BuilderID, err)
			}
		})
	}
	// Within the limits, the same statement verifies.
	if _, err := v.Verify(signBuild(t, &Build{DrvPath: many.DrvPath, System: many.System, BuilderID: builder,
		Outputs: many.Outputs[:maxSubjects]}, s, nil), want); err != nil {
		t.Fatalf("%d subjects: %v", maxSubjects, err)
	}

	// VerifyStatement (verification summaries) checks the digests alike.
	good := signBuild(t, testBuild(builder), s, nil)
	claimed := func(*intoto.Statement) (string, error) { return builder, nil }
	if _, err := v.VerifyStatement(good, [][32]byte{want[0].NarHash}, claimed); err != nil {
		t.Fatalf("VerifyStatement: %v", err)
	}
	if _, err := v.VerifyStatement(good, [][32]byte{other[0].NarHash}, claimed); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("VerifyStatement, digest differs: %v", err)
	}
	if _, err := v.VerifyStatement(signBuild(t, many, s, nil), [][32]byte{want[0].NarHash}, claimed); !errors.Is(err, ErrMalformedBundle) {
		t.Fatalf("VerifyStatement, too many subjects: %v", err)
	}
	if _, err := v.VerifyStatement(good, nil, claimed); err == nil {
		t.Fatal("VerifyStatement without digests succeeded")
	}
}

func TestVerifyNeedsSubject(t *testing.T) {
	k, _ := newKey(t)
	v, err := NewVerifier(nil, WithKeys(TrustedBuilder{ID: "b", PublicKey: k.Public()}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify([]byte("{}"), nil); err == nil {
		t.Fatal("Verify without expected subjects succeeded")
	}
}

func TestNewVerifierRejectsSharedKey(t *testing.T) {
	k, _ := newKey(t)
	if _, err := NewVerifier(nil, WithKeys(TrustedBuilder{ID: "a", PublicKey: k.Public()}, TrustedBuilder{ID: "b", PublicKey: k.Public()})); err == nil {
		t.Fatal("two builders with one key accepted")
	}
	// An empty key set trusts no key: only keyless identities could verify.
	v, err := NewVerifier(nil)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := NewSigner(k)
	if err != nil {
		t.Fatal(err)
	}
	st, err := NewStatement(&Build{DrvPath: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x.drv", System: "x86_64-linux", BuilderID: "a",
		Outputs: []Output{{Name: "out", Path: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x"}}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Sign(context.Background(), st, signer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(b, []Subject{{Path: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x"}}); !errors.Is(err, ErrUnknownSigner) {
		t.Fatalf("empty trust: %v", err)
	}
}

func TestKeyRoundTrip(t *testing.T) {
	k, _ := newKey(t)
	priv, err := MarshalPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "k")
	if err := os.WriteFile(path, priv, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSigner(path); err == nil {
		t.Fatal("world-readable key accepted")
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := LoadSigner(path)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := KeyID(k.Public())
	if s.KeyID() != want {
		t.Fatalf("key id %s, want %s", s.KeyID(), want)
	}
	pub, _ := MarshalPublicKey(k.Public())
	pk, err := ParsePublicKey(pub)
	if err != nil || !pk.Equal(k.Public()) {
		t.Fatalf("public key round trip: %v", err)
	}
	if _, err := ParsePublicKey(priv); err == nil {
		t.Fatal("private PEM parsed as public key")
	}
}

// TestGolden verifies a bundle committed to testdata/, so a change in how
// we or sigstore-go encode bundles cannot silently orphan published ones.
func TestGolden(t *testing.T) {
	const builder = "https://builders.example/golden"
	bundlePath, pubPath := filepath.Join("testdata", "golden.bundle.json"), filepath.Join("testdata", "golden.pub")
	if *update {
		k, s := newKey(t)
		pub, _ := MarshalPublicKey(k.Public())
		os.MkdirAll("testdata", 0o755)
		os.WriteFile(pubPath, pub, 0o644)
		os.WriteFile(bundlePath, signBuild(t, testBuild(builder), s, nil), 0o644)
	}
	pub, err := LoadPublicKeyFile(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(bundlePath)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(nil, WithKeys(TrustedBuilder{ID: builder, PublicKey: pub}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(b, []Subject{{Path: testOut, NarHash: sha256.Sum256([]byte("nar"))}}); err != nil {
		t.Fatalf("golden bundle: %v", err)
	}
}

func BenchmarkVerify(b *testing.B) {
	const builder = "https://builders.example/bench"
	v, s := keyVerifier(b, builder)
	bj := signBuild(b, testBuild(builder), s, nil)
	want := []Subject{{Path: testOut, NarHash: sha256.Sum256([]byte("nar"))}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(bj, want); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBaselineECDSAVerify is the floor under BenchmarkVerify: one raw
// P-256 signature check.
func BenchmarkBaselineECDSAVerify(b *testing.B) {
	k, s := newKey(b)
	sig, digest, err := s.SignData(context.Background(), []byte("payload"))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if !ecdsa.VerifyASN1(&k.PublicKey, digest, sig) {
			b.Fatal("verify failed")
		}
	}
}

// TestVerifySignedMalformed: a statement the trusted key signed that is
// not valid provenance names its signer (SignedMalformedError); a bad
// signature, an unknown key or a statement of another kind names no one.
func TestVerifySignedMalformed(t *testing.T) {
	const builder = "https://builders.example/alice"
	v, s := keyVerifier(t, builder)
	_, other := newKey(t)
	want := []Subject{{Path: testOut, NarHash: sha256.Sum256([]byte("nar"))}}
	badRef := func(m map[string]any) {
		subj := m["subject"].([]any)[0].(map[string]any)
		subj["annotations"].(map[string]any)["references"] = []any{"not/a/store/path"}
	}
	noDrv := func(m map[string]any) {
		delete(m["predicate"].(map[string]any)["buildDefinition"].(map[string]any)["externalParameters"].(map[string]any), "derivation")
	}
	good := signBuild(t, testBuild(builder), s, nil)
	for _, tc := range []struct {
		name   string
		bundle []byte
		blame  string
	}{
		{"bad reference", signBuild(t, testBuild(builder), s, badRef), builder},
		{"no derivation", signBuild(t, testBuild(builder), s, noDrv), builder},
		{"another builder's id", signBuild(t, testBuild("https://builders.example/mallory"), s, nil), builder},
		{"bad reference, unknown key", signBuild(t, testBuild(builder), other, badRef), ""},
		{"bad reference, not signed", alterPayload(t, good, func(p string) string {
			return strings.Replace(p, testDep, "not/a/store/path", 1)
		}), ""},
		{"another kind of statement", signBuild(t, testBuild(builder), s, func(m map[string]any) {
			m["predicateType"] = "https://slsa.dev/provenance/v0.2"
			badRef(m)
		}), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.Verify(tc.bundle, want)
			if err == nil {
				t.Fatal("verified")
			}
			var sm *SignedMalformedError
			got := ""
			if errors.As(err, &sm) {
				got = sm.BuilderID
				if !errors.Is(err, ErrSignedMalformed) || !errors.Is(err, ErrVerification) {
					t.Errorf("%v does not wrap ErrSignedMalformed and ErrVerification", err)
				}
			}
			if got != tc.blame {
				t.Fatalf("blame %q, want %q (%v)", got, tc.blame, err)
			}
		})
	}
}

// TestVerifySignedOddPayloads: a trusted key signs, byte for byte,
// payloads that are not what Sign writes. What sigstore-go's own reading
// (protojson) refuses is refused before the signer is known, and not
// blamed on it, as before attest read the payload itself; what protojson
// takes but is no provenance (a null predicate) is the signer's doing.
func TestVerifySignedOddPayloads(t *testing.T) {
	const builder = "https://builders.example/alice"
	v, s := keyVerifier(t, builder)
	good := statementPayload(t, builder)
	start, end, err := predicateSpan(good)
	if err != nil || start < 0 {
		t.Fatalf("predicate of the good payload: %d %d %v", start, end, err)
	}
	predicate := func(v string) []byte { return []byte(string(good[:start]) + v + string(good[end:])) }
	inPredicate := func(members string) []byte { return predicate("{" + members + string(good[start+1:end])) }
	want := []Subject{{Path: testOut, NarHash: sha256.Sum256([]byte("nar"))}}
	for _, tc := range []struct {
		name    string
		payload []byte
		blamed  bool
	}{
		{"predicate a string", predicate(`"x"`), false},
		{"predicate an array", predicate(`[1]`), false},
		{"predicate a number", predicate(`1`), false},
		{"invalid UTF-8 in the predicate", inPredicate("\"zz\":\"\xff\","), false},
		{"a key twice in the predicate", inPredicate(`"zz":1,"zz":2,`), false},
		{"a number out of range in the predicate", inPredicate(`"zz":1e999,`), false},
		{"predicate null", predicate(`null`), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st intoto.Statement
			if refused := protojson.Unmarshal(tc.payload, &st) != nil; refused == tc.blamed {
				t.Fatalf("protojson refused it: %v; the case assumes the opposite", refused)
			}
			b, err := signPayload(tc.payload, s, sign.BundleOptions{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = v.Verify(b, want)
			var sm *SignedMalformedError
			if err == nil || !errors.Is(err, ErrVerification) || errors.As(err, &sm) != tc.blamed {
				t.Fatalf("Verify: %v; want refused, blamed on the signer: %v", err, tc.blamed)
			}
		})
	}
}
