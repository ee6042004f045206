package queue

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	natsd "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"codeberg.org/provenix/provenix/internal/testctx"
)

// testPKI is a CA with a server certificate for 127.0.0.1 and a client
// certificate, all written as PEM files.
type testPKI struct {
	caFile, serverCert, serverKey, clientCert, clientKey string
	serverTLS                                            *tls.Config
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	now := time.Now()
	caKey := newKey()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "provenix test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		k := newKey()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name+".pem", "CERTIFICATE", der), write(name+".key", "EC PRIVATE KEY", kder)
	}
	p := testPKI{caFile: write("ca.pem", "CERTIFICATE", caDER)}
	p.serverCert, p.serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	cert, err := tls.LoadX509KeyPair(p.serverCert, p.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	p.serverTLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	return p
}

// TestConnectTLSAndNKey: a server that requires TLS with client
// certificates and an NKey user accepts the client with all three and
// refuses it without the CA, without the client certificate, or with
// another NKey.
func TestConnectTLSAndNKey(t *testing.T) {
	pki := newTestPKI(t)
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	other, _ := nkeys.CreateUser()
	otherSeed, _ := other.Seed()
	otherFile := filepath.Join(t.TempDir(), "other.nk")
	os.WriteFile(otherFile, otherSeed, 0o600)

	ns, err := natsd.NewServer(&natsd.Options{Host: "127.0.0.1", Port: natsd.RANDOM_PORT, JetStream: true,
		StoreDir: t.TempDir(), TLSConfig: pki.serverTLS, TLS: true, TLSVerify: true, TLSTimeout: 2,
		Nkeys: []*natsd.NkeyUser{{Nkey: pub}}, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("TLS server not ready")
	}
	addr := ns.Addr().String()
	tlsURL := "tls://" + addr

	c := connect(t, tlsURL, WithRootCA(pki.caFile), WithClientCert(pki.clientCert, pki.clientKey), WithNKeySeedFile(seedFile))
	if !c.NATS().TLSRequired() {
		t.Error("connection is not TLS")
	}
	if err := c.EnsureStreams(testctx.New(t, 30*time.Second), StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PublishResult(testctx.New(t, 30*time.Second), testResult(1)); err != nil {
		t.Fatalf("publish over TLS: %v", err)
	}
	// A nats:// URL with a CA file is TLS too.
	connect(t, "nats://"+addr, WithRootCA(pki.caFile), WithClientCert(pki.clientCert, pki.clientKey), WithNKeySeedFile(seedFile))

	refused := []struct {
		name string
		opts []Option
		want string
	}{
		{"no CA", []Option{WithClientCert(pki.clientCert, pki.clientKey), WithNKeySeedFile(seedFile)}, "certificate"},
		{"no client certificate", []Option{WithRootCA(pki.caFile), WithNKeySeedFile(seedFile)}, ""},
		{"other nkey", []Option{WithRootCA(pki.caFile), WithClientCert(pki.clientCert, pki.clientKey), WithNKeySeedFile(otherFile)}, "authorization"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
			defer cancel()
			c, err := Connect(ctx, tlsURL, tt.opts...)
			if err == nil {
				c.Close()
				t.Fatal("connected")
			}
			if !strings.Contains(strings.ToLower(err.Error()), tt.want) {
				t.Fatalf("error %v, want it to mention %q", err, tt.want)
			}
		})
	}

	// Configuration errors are reported at once, not retried.
	bad := []struct {
		name string
		opts []Option
	}{
		{"missing CA file", []Option{WithRootCA(filepath.Join(t.TempDir(), "nope.pem"))}},
		{"CA file without PEM", []Option{WithRootCA(seedFile)}},
		{"cert without key", []Option{WithClientCert(pki.clientCert, "")}},
		{"bad nkey seed", []Option{WithNKeySeedFile(pki.caFile)}},
		{"nkey and token", []Option{WithNKeySeedFile(seedFile), WithToken("x")}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			c, err := Connect(ctx, tlsURL, tt.opts...)
			if err == nil {
				c.Close()
				t.Fatal("connected")
			}
			if errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
				t.Fatalf("took %s to fail (%v): a configuration error must not be retried", time.Since(start), err)
			}
		})
	}
}
