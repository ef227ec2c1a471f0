from prefactor_otel.tools.cli import main

raise SystemExit(main())
