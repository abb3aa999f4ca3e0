from crm_app.cli import main

main()
