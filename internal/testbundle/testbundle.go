// Package testbundle alters Sigstore bundles the way an attacker on the
// wire can: the signed payload changed, the signature kept.
package testbundle

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"testing"
)

// AlterPayload replaces the first old in bundle's DSSE payload with new
// and keeps the signature; it fails the test when the payload lacks old.
func AlterPayload(t testing.TB, bundle []byte, old, new string) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(bundle, &m); err != nil {
		t.Fatal(err)
	}
	env, ok := m["dsseEnvelope"].(map[string]any)
	if !ok {
		t.Fatal("bundle has no DSSE envelope")
	}
	p, err := base64.StdEncoding.DecodeString(env["payload"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(p, []byte(old)) {
		t.Fatalf("payload lacks %q", old)
	}
	env["payload"] = base64.StdEncoding.EncodeToString(bytes.Replace(p, []byte(old), []byte(new), 1))
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
