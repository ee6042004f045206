// Command timestamp-server is Sigstore's RFC 3161 timestamp authority,
// built from its Go module so integration tests can run a real TSA
// (internal/testtsa). scripts/tsa.sh builds it.
//
// It serves upstream's REST API (pkg/server, the handler of
// cmd/timestamp-server) with the in-memory signer, but not upstream's
// serve command: that one always listens for Prometheus on the fixed port
// :2112 and exits when the port is taken, so two test TSAs (or one next to
// anything else on 2112) cannot run at once. NTP monitoring is left out
// too (tests run offline). Usage:
//
//	timestamp-server serve --host 127.0.0.1 --port P [--log-type dev|prod]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	tsalog "github.com/sigstore/timestamp-authority/v2/pkg/log"
	"github.com/sigstore/timestamp-authority/v2/pkg/server"
	"github.com/spf13/viper"
)

// policyOID is upstream's default (and only accepted) timestamp policy.
const policyOID = "1.3.6.1.4.1.57264.2"

const (
	ioTimeout       = 30 * time.Second
	shutdownTimeout = 5 * time.Second
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "serve" {
		fmt.Fprintln(os.Stderr, "usage: timestamp-server serve --host H --port P [--log-type dev|prod]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	host := fs.String("host", "127.0.0.1", "address to listen on")
	port := fs.Int("port", 3000, "port to listen on")
	logType := fs.String("log-type", "dev", "logger type (dev/prod)")
	_ = fs.Parse(os.Args[2:])

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, net.JoinHostPort(*host, strconv.Itoa(*port)), *logType); err != nil {
		fmt.Fprintln(os.Stderr, "timestamp-server:", err)
		os.Exit(1)
	}
}

func serve(ctx context.Context, addr, logType string) error {
	tsalog.ConfigureLogger(logType)
	// What upstream's flags default to; the API reads them from viper.
	viper.Set("timestamp-signer", "memory")
	viper.Set("timestamp-signer-hash", "sha256")
	viper.Set("default-policy-oid", policyOID)
	viper.Set("accepted-policy-oids", []string{policyOID})
	viper.Set("allow-custom-extensions", false)
	viper.Set("max-request-body-size", uint64(1<<20))
	viper.Set("enforce-intermediate-eku", true)

	api := server.NewRestAPIServer("", 0, []string{"http"}, false, ioTimeout, ioTimeout)
	srv := &http.Server{
		Addr:              addr,
		Handler:           api.GetHandler(),
		ReadHeaderTimeout: ioTimeout,
		ReadTimeout:       ioTimeout,
		WriteTimeout:      ioTimeout,
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	tsalog.Logger.Infof("serving timestamp server at http://%s", ln.Addr())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
