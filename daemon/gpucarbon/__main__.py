from gpucarbon.cli import main

raise SystemExit(main())
