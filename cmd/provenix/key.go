package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/attest"
	cachepush "codeberg.org/provenix/provenix/cache-push"
)

func newKeyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Manage signing keys",
	}
	var builder, vsaKey bool
	var cacheName string
	gen := &cobra.Command{
		Use:   "generate (--builder | --vsa | --cache NAME) FILE",
		Short: "Generate a builder signing key, a VSA key or a Nix binary-cache key",
		Long: `Generate a key pair. Existing files are never overwritten.

--builder FILE       ECDSA P-256 key for signing provenance: FILE (PKCS#8 PEM,
                     mode 0600) and FILE.pub (PKIX PEM, for policies, 'provenix
                     verify --key' and 'cosign --key').
--vsa FILE           the same kind of key, for a cache pusher to sign its
                     verification summaries with ('cache-push --vsa-key');
                     FILE.pub is what 'provenix verify --vsa-key' and
                     'cosign --key' check them with.
--cache NAME FILE    Nix binary-cache key pair in Nix's own "NAME:base64" format
                     (as 'nix-store --generate-binary-cache-key NAME FILE
                     FILE.pub' makes): FILE is the secret key for the pusher,
                     FILE.pub goes into clients' trusted-public-keys.`,
		Example: `  provenix key generate --builder builder.key
  provenix key generate --vsa vsa.key
  provenix key generate --cache cache.example.org-1 cache.key`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := args[0]
			switch {
			case btoi(builder)+btoi(vsaKey)+btoi(cacheName != "") > 1:
				return usageError("give one of --builder, --vsa and --cache NAME")
			case vsaKey:
				s, err := attest.GenerateKeyFiles(file)
				if err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "VSA key:    %s (secret, 0600)\npublic key: %s.pub\nkey id:     %s\n", file, file, s.KeyID())
			case builder:
				s, err := attest.GenerateKeyFiles(file)
				if err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "builder key: %s (secret, 0600)\npublic key:  %s.pub\nkey id:      %s\n", file, file, s.KeyID())
			case cacheName != "":
				pk, err := cachepush.GenerateKeyFiles(cacheName, file)
				if err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "cache key:  %s (secret, 0600)\npublic key: %s.pub\ntrusted-public-keys = %s\n", file, file, pk.String())
			default:
				return usageError("say which key: --builder FILE, --vsa FILE or --cache NAME FILE")
			}
			return nil
		},
	}
	gen.Flags().BoolVar(&builder, "builder", false, "generate a builder (provenance signing) key")
	gen.Flags().BoolVar(&vsaKey, "vsa", false, "generate a cache pusher's verification summary (VSA) signing key")
	gen.Flags().StringVar(&cacheName, "cache", "", "generate a Nix binary-cache key named `NAME`")
	cmd.AddCommand(gen)
	return cmd
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
