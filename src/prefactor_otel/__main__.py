from prefactor_otel.cli import main

raise SystemExit(main())
