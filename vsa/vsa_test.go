package vsa_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/internal/testbundle"
	"codeberg.org/provenix/provenix/internal/testkey"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/vsa"
)

const (
	verifierID = "https://cache.example/provenix/cache-push"
	storePath  = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello"
)

var (
	nar       = []byte("the NAR bytes of hello")
	narSum    = sha256.Sum256(nar)
	policyDoc = []byte(`{"policy":"builders: []"}`)
)

func summary() *vsa.Summary {
	return &vsa.Summary{
		Subjects:          []vsa.Subject{{Name: storePath, Digest: vsa.SHA256(narSum)}},
		VerifierID:        verifierID,
		TimeVerified:      time.Date(2026, 12, 6, 4, 0, 0, 0, time.UTC),
		ResourceURI:       "https://cache.example/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.narinfo",
		Policy:            vsa.Ref{URI: "https://cache.example/provenix/policy.json", Digest: vsa.DocumentDigest(policyDoc)},
		InputAttestations: []vsa.Ref{{URI: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.provenance.json#/bundles/0", Digest: vsa.DocumentDigest([]byte("bundle"))}},
		Result:            vsa.Passed,
		VerifiedLevels:    []string{vsa.BuildLevel2},
	}
}

func expect() vsa.Expect {
	return vsa.Expect{
		Subject:      vsa.Subject{Name: storePath, Digest: vsa.SHA256(narSum)},
		PolicyDigest: vsa.DocumentDigest(policyDoc),
	}
}

func TestNewParseRoundTrip(t *testing.T) {
	s := summary()
	st, err := vsa.New(s)
	if err != nil {
		t.Fatal(err)
	}
	if st.GetPredicateType() != "https://slsa.dev/verification_summary/v1" {
		t.Fatalf("predicate type %q", st.GetPredicateType())
	}
	got, err := vsa.Parse(st)
	if err != nil {
		t.Fatal(err)
	}
	s.SLSAVersion = vsa.SLSAVersion
	a, _ := json.Marshal(s)
	b, _ := json.Marshal(got)
	if !bytes.Equal(a, b) {
		t.Fatalf("round trip:\n%s\n%s", a, b)
	}
	// The predicate's JSON uses the spec's field names.
	pj, _ := json.Marshal(st.GetPredicate().AsMap())
	for _, k := range []string{`"verifier":{"id":`, `"timeVerified":`, `"resourceUri":`, `"policy":{`, `"inputAttestations":[`, `"verificationResult":"PASSED"`, `"verifiedLevels":["SLSA_BUILD_LEVEL_2"]`} {
		if !bytes.Contains(pj, []byte(k)) {
			t.Errorf("predicate lacks %s: %s", k, pj)
		}
	}
}

func TestNewRefusesIncomplete(t *testing.T) {
	for name, edit := range map[string]func(*vsa.Summary){
		"no subject":        func(s *vsa.Summary) { s.Subjects = nil },
		"subject no sha256": func(s *vsa.Summary) { s.Subjects[0].Digest = map[string]string{"sha512": "00"} },
		"subject upper hex": func(s *vsa.Summary) {
			s.Subjects[0].Digest = map[string]string{"sha256": "AB" + vsa.SHA256(narSum)["sha256"][2:]}
		},
		"verifier not URI":   func(s *vsa.Summary) { s.VerifierID = "pusher" },
		"no resource":        func(s *vsa.Summary) { s.ResourceURI = "" },
		"policy no digest":   func(s *vsa.Summary) { s.Policy.Digest = nil },
		"policy no URI":      func(s *vsa.Summary) { s.Policy.URI = "" },
		"input no digest":    func(s *vsa.Summary) { s.InputAttestations[0].Digest = nil },
		"result other":       func(s *vsa.Summary) { s.Result = "MAYBE" },
		"no verified levels": func(s *vsa.Summary) { s.VerifiedLevels = nil },
	} {
		t.Run(name, func(t *testing.T) {
			s := summary()
			edit(s)
			if _, err := vsa.New(s); !errors.Is(err, vsa.ErrInvalid) {
				t.Fatalf("New = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	ctx := t.Context()
	signer, key := testkey.Signer(t)
	other, _ := testkey.Signer(t)
	v, err := vsa.NewVerifier(nil, attest.WithKeys(vsa.TrustedVerifier{ID: verifierID, PublicKey: key.Public()}))
	if err != nil {
		t.Fatal(err)
	}
	good, err := vsa.Sign(ctx, summary(), signer)
	if err != nil {
		t.Fatal(err)
	}
	got, err := v.Verify(good, expect())
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got.VerifierID != verifierID || got.Result != vsa.Passed || got.Signer.ID != verifierID {
		t.Fatalf("verified %+v", got.Summary)
	}
	if _, err := v.Verify(good, vsa.Expect{Subject: expect().Subject, PolicyDigest: expect().PolicyDigest, Levels: []string{vsa.BuildLevel2}}); err != nil {
		t.Fatalf("Verify with the level it has: %v", err)
	}

	signWith := func(edit func(*vsa.Summary)) []byte {
		s := summary()
		edit(s)
		b, err := vsa.Sign(ctx, s, signer)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	otherNAR := sha256.Sum256([]byte("another NAR"))
	provenance := func() []byte {
		st, err := attest.NewStatement(&attest.Build{DrvPath: "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-hello.drv", System: "x86_64-linux", BuilderID: verifierID,
			Outputs: []attest.Output{{Name: "out", Path: storePath, NarHash: narSum, NarSize: uint64(len(nar))}}})
		if err != nil {
			t.Fatal(err)
		}
		b, err := attest.Sign(ctx, st, signer)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}()
	otherKey, err := vsa.Sign(ctx, summary(), other)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		bundle []byte
		want   vsa.Expect
		err    error
	}{
		"another policy":           {signWith(func(s *vsa.Summary) { s.Policy.Digest = vsa.DocumentDigest([]byte("lax policy")) }), expect(), vsa.ErrPolicyMismatch},
		"expecting another policy": {good, vsa.Expect{Subject: expect().Subject, PolicyDigest: vsa.DocumentDigest([]byte("x"))}, vsa.ErrPolicyMismatch},
		"another NAR hash":         {signWith(func(s *vsa.Summary) { s.Subjects[0].Digest = vsa.SHA256(otherNAR) }), expect(), attest.ErrDigestMismatch},
		"another path, same NAR": {signWith(func(s *vsa.Summary) {
			s.Subjects[0].Name = "/nix/store/cccccccccccccccccccccccccccccccc-hello"
		}), expect(), vsa.ErrSubjectMismatch},
		"failed":             {signWith(func(s *vsa.Summary) { s.Result = vsa.Failed }), expect(), vsa.ErrNotPassed},
		"missing level":      {good, vsa.Expect{Subject: expect().Subject, PolicyDigest: expect().PolicyDigest, Levels: []string{"SLSA_BUILD_LEVEL_3"}}, vsa.ErrNotPassed},
		"another verifier":   {signWith(func(s *vsa.Summary) { s.VerifierID = "https://other.example/pusher" }), expect(), vsa.ErrVerifierMismatch},
		"another resource":   {good, vsa.Expect{Subject: expect().Subject, PolicyDigest: expect().PolicyDigest, ResourceURI: "https://elsewhere/"}, vsa.ErrResourceMismatch},
		"untrusted key":      {otherKey, expect(), attest.ErrUnknownSigner},
		"provenance, no VSA": {provenance, expect(), vsa.ErrPredicateType},
		"tampered payload":   {tamper(t, good), expect(), attest.ErrSignature},
		"not a bundle":       {[]byte("{}"), expect(), attest.ErrMalformedBundle},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := v.Verify(tc.bundle, tc.want)
			if !errors.Is(err, tc.err) || !errors.Is(err, attest.ErrVerification) {
				t.Fatalf("Verify = %v, want %v", err, tc.err)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// tamper raises the summary's policy digest in the signed payload
// without re-signing it.
func tamper(t *testing.T, bundle []byte) []byte {
	return testbundle.AlterPayload(t, bundle, vsa.DocumentDigest(policyDoc)["sha256"], vsa.DocumentDigest([]byte("lax"))["sha256"])
}

// TestCosignVerifiesVSA: cosign, an independent verifier, accepts a signed
// summary for the blob it is about, and refuses a tampered one and one
// about another blob.
func TestCosignVerifiesVSA(t *testing.T) {
	cosign := testproc.Cosign(t)
	signer, key := testkey.Signer(t)
	good, err := vsa.Sign(t.Context(), summary(), signer)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pub, err := attest.MarshalPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pubPath, blob, otherBlob := write("vsa.pub", pub), write("hello.nar", nar), write("other.nar", []byte("another NAR"))
	run := func(bundle []byte, blob string) ([]byte, error) {
		cmd := exec.CommandContext(t.Context(), cosign, "verify-blob-attestation", "--key", pubPath,
			"--type", vsa.PredicateType, "--bundle", write("vsa.json", bundle), "--new-bundle-format",
			"--insecure-ignore-tlog", blob)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		return cmd.CombinedOutput()
	}
	if out, err := run(good, blob); err != nil || !bytes.Contains(out, []byte("Verified OK")) {
		t.Fatalf("cosign refused the VSA: %v\n%s", err, out)
	} else {
		t.Logf("cosign: %s", out)
	}
	if out, err := run(tamper(t, good), blob); err == nil {
		t.Fatalf("cosign accepted a tampered VSA:\n%s", out)
	}
	if out, err := run(good, otherBlob); err == nil {
		t.Fatalf("cosign accepted the VSA for another blob:\n%s", out)
	}
}
