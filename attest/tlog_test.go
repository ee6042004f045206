package attest

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testrekor"
)

// signLogged signs the sample build with s and uploads it to the log.
func signLogged(t *testing.T, s *Signer, builder, rekorURL string) []byte {
	t.Helper()
	st, err := NewStatement(testBuild(builder))
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	bj, err := SignWithLog(t.Context(), st, s, LogOptions{RekorURL: rekorURL})
	if err != nil {
		t.Fatalf("SignWithLog: %v", err)
	}
	t.Logf("sign + upload to the log: %s", time.Since(began))
	return bj
}

// editBundle decodes a bundle, applies f to its verificationMaterial and
// re-encodes it.
func editBundle(t *testing.T, bundleJSON []byte, f func(vm map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(bundleJSON, &m); err != nil {
		t.Fatal(err)
	}
	f(m["verificationMaterial"].(map[string]any))
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func firstEntry(vm map[string]any) map[string]any {
	return vm["tlogEntries"].([]any)[0].(map[string]any)
}

func TestTransparencyLog(t *testing.T) {
	const builder = "https://builders.example/alice"
	log := testrekor.Start(t)
	t.Logf("rekor-tiles ready after %s", log.StartupTime)
	k, s := newKey(t)
	want := []Subject{{Path: testOut, NarHash: sha256.Sum256([]byte("nar"))}}

	// A first entry, so the second one's inclusion proof has a hash to alter.
	signLogged(t, s, builder, log.URL)
	logged := signLogged(t, s, builder, log.URL)
	t.Logf("bundle (%d bytes) tlog entry: %s", len(logged), func() string {
		var m map[string]any
		_ = json.Unmarshal(logged, &m)
		e, _ := json.Marshal(firstEntry(m["verificationMaterial"].(map[string]any))["kindVersion"])
		return string(e)
	}())
	unlogged := signBuild(t, testBuild(builder), s, nil)

	plain, err := NewVerifier(nil, WithKeys(TrustedBuilder{ID: builder, PublicKey: k.Public()}))
	if err != nil {
		t.Fatal(err)
	}
	strict, err := NewVerifier(log.TrustedRoot, WithKeys(TrustedBuilder{ID: builder, PublicKey: k.Public()}), WithRequiredTlog())
	if err != nil {
		t.Fatal(err)
	}
	// A verifier trusting only another, equally real log.
	other := testrekor.Start(t)
	elsewhere, err := NewVerifier(other.TrustedRoot, WithKeys(TrustedBuilder{ID: builder, PublicKey: k.Public()}), WithRequiredTlog())
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		v       *Verifier
		bundle  []byte
		wantErr error
	}{
		{"logged, log required", strict, logged, nil},
		{"logged, log not required", plain, logged, nil},
		{"not logged, log not required", plain, unlogged, nil},
		{"not logged, log required", strict, unlogged, ErrTransparencyLog},
		{"tlog entries removed", strict, editBundle(t, logged, func(vm map[string]any) {
			delete(vm, "tlogEntries")
		}), ErrTransparencyLog},
		{"log index changed", strict, editBundle(t, logged, func(vm map[string]any) {
			e := firstEntry(vm)
			if e["logIndex"] != "1" {
				t.Fatalf("logIndex = %v, want 1", e["logIndex"])
			}
			e["logIndex"] = "0"
			e["inclusionProof"].(map[string]any)["logIndex"] = "0"
		}), ErrTransparencyLog},
		{"inclusion proof hash changed", strict, editBundle(t, logged, alterProofHash(t)), ErrTransparencyLog},
		{"checkpoint changed", strict, editBundle(t, logged, func(vm map[string]any) {
			cp := firstEntry(vm)["inclusionProof"].(map[string]any)["checkpoint"].(map[string]any)
			env := cp["envelope"].(string)
			if !strings.HasPrefix(env, "127.0.0.1\n2\n") {
				t.Fatalf("checkpoint = %q, want origin 127.0.0.1 and size 2", env)
			}
			cp["envelope"] = "127.0.0.1\n3\n" + env[len("127.0.0.1\n2\n"):]
		}), ErrTransparencyLog},
		{"log id changed", strict, editBundle(t, logged, func(vm map[string]any) {
			id := firstEntry(vm)["logId"].(map[string]any)
			id["keyId"] = flipB64(t, id["keyId"].(string))
		}), ErrTransparencyLog},
		{"entry from an untrusted log", elsewhere, logged, ErrTransparencyLog},
		{"payload altered, log required", strict, alterPayload(t, logged, func(p string) string {
			return p[:len(p)-2] + " }"
		}), ErrSignature},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.v.Verify(tc.bundle, want)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if got.BuilderID != builder {
					t.Fatalf("builder = %q", got.BuilderID)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Verify error = %v, want %v", err, tc.wantErr)
			}
			t.Logf("rejected: %v", err)
		})
	}

	t.Run("cosign", func(t *testing.T) {
		cosign := filepath.Join(build.Default.GOPATH, "bin", "cosign")
		if p, err := exec.LookPath("cosign"); err == nil {
			cosign = p
		}
		if _, err := os.Stat(cosign); err != nil {
			t.Fatalf("cosign is required: go install github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3 (%v)", err)
		}
		dir := t.TempDir()
		pub, err := MarshalPublicKey(k.Public())
		if err != nil {
			t.Fatal(err)
		}
		pubPath, bundlePath := filepath.Join(dir, "builder.pub"), filepath.Join(dir, "b.json")
		os.WriteFile(pubPath, pub, 0o644)
		run := func(b []byte) ([]byte, error) {
			if err := os.WriteFile(bundlePath, b, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.CommandContext(t.Context(), cosign, "verify-blob-attestation",
				"--bundle", bundlePath, "--key", pubPath, "--type", "slsaprovenance1",
				"--trusted-root", log.TrustedRootPath,
				"--digest", hex.EncodeToString(want[0].NarHash[:]), "--digestAlg", "sha256")
			return cmd.CombinedOutput()
		}
		if out, err := run(logged); err != nil {
			t.Fatalf("cosign rejected the logged bundle: %v\n%s", err, out)
		}
		if out, err := run(editBundle(t, logged, func(vm map[string]any) { delete(vm, "tlogEntries") })); err == nil {
			t.Fatalf("cosign accepted the bundle without its log entry:\n%s", out)
		}
		if out, err := run(editBundle(t, logged, alterProofHash(t))); err == nil {
			t.Fatalf("cosign accepted the bundle with an altered inclusion proof:\n%s", out)
		}
	})
}

// alterProofHash flips a bit of the first hash of the inclusion proof. (Its
// rootHash field is not worth altering: for Rekor v2, sigstore-go and cosign
// take the root from the signed checkpoint and ignore that field.)
func alterProofHash(t *testing.T) func(vm map[string]any) {
	return func(vm map[string]any) {
		hs, _ := firstEntry(vm)["inclusionProof"].(map[string]any)["hashes"].([]any)
		if len(hs) == 0 {
			t.Fatal("inclusion proof has no hashes")
		}
		hs[0] = flipB64(t, hs[0].(string))
	}
}

// flipB64 flips one bit of base64-encoded bytes.
func flipB64(t *testing.T, s string) string {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		t.Fatalf("decode %q: %v", s, err)
	}
	b[0] ^= 1
	return base64.StdEncoding.EncodeToString(b)
}
