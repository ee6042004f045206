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
	var builder bool
	var cacheName string
	gen := &cobra.Command{
		Use:   "generate (--builder | --cache NAME) FILE",
		Short: "Generate a builder signing key or a Nix binary-cache key",
		Long: `Generate a key pair. Existing files are never overwritten.

--builder FILE       ECDSA P-256 key for signing provenance: FILE (PKCS#8 PEM,
                     mode 0600) and FILE.pub (PKIX PEM, for policies, 'provenix
                     verify --key' and 'cosign --key').
--cache NAME FILE    Nix binary-cache key pair in Nix's own "NAME:base64" format
                     (as 'nix-store --generate-binary-cache-key NAME FILE
                     FILE.pub' makes): FILE is the secret key for the pusher,
                     FILE.pub goes into clients' trusted-public-keys.`,
		Example: `  provenix key generate --builder builder.key
  provenix key generate --cache cache.example.org-1 cache.key`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := args[0]
			switch {
			case builder && cacheName != "":
				return usageError("give either --builder or --cache NAME, not both")
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
				return usageError("say which key: --builder FILE or --cache NAME FILE")
			}
			return nil
		},
	}
	gen.Flags().BoolVar(&builder, "builder", false, "generate a builder (provenance signing) key")
	gen.Flags().StringVar(&cacheName, "cache", "", "generate a Nix binary-cache key named `NAME`")
	cmd.AddCommand(gen)
	return cmd
}
