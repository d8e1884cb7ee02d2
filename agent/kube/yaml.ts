/** The YAML parser, a chunk of its own in the build: only a kubeconfig needs it (see config.ts). */
export { parse as parseYaml } from 'yaml';
